"""The platform's backup that restores (`chexops backup run` / `restore`): a real MLflow server (PostgreSQL backend,
artifacts in S3 on a real moto server) and a feedback store on the same PostgreSQL are backed up to an S3 backup
bucket, the databases are dropped and the artifact bucket emptied, and after the restore MLflow's registered
versions, aliases and artifacts and every feedback with its image are back; retention keeps the newest backups."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from chexops.core.processes import free_port
from chexops.feedback.images import S3Images
from chexops.feedback.store import FeedbackStore
from mlflow_fixtures import _pg_binary, mlflow_server, postgres_server
from support import ROOT, environment, reset_moto, run_cli
from test_backup import everything, fill

pytestmark = pytest.mark.slow

# What the cluster's CronJob dumps (its init container's loop) and the arguments its chexops step runs with.
CRONJOB = yaml.safe_load((ROOT / "k8s/platform/backup/cronjob.yaml").read_text())
_POD = CRONJOB["spec"]["jobTemplate"]["spec"]["template"]["spec"]
DATABASES = re.search(r"for db in ([\w ]+); do", _POD["initContainers"][0]["command"][-1]).group(1).split()
CRON_ARGS = _POD["containers"][0]["args"]
assert CRON_ARGS[:2] == ["backup", "run"] and "feedback_production" in DATABASES and "mlflow" in DATABASES


@pytest.fixture
def s3():
    """A real S3 server (moto's server mode) with MLflow's bucket and the backup bucket; yields a boto3 client."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    reset_moto(endpoint)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "moto-key-id",
        "AWS_SECRET_ACCESS_KEY": "moto-any-value",  # pragma: allowlist secret
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
    }
    try:
        with environment(**env):
            import boto3

            client = boto3.Session().client("s3")
            for bucket in ("mlflow", "chexops-backups", "chexops-images"):
                client.create_bucket(Bucket=bucket)
            yield client
    finally:
        server.stop()


def registry_state(uri: str, tmp: Path) -> dict:
    """What the registry holds: each version's run and source, the aliases, and one artifact's text."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    versions = {v.version: (v.run_id, v.source) for v in client.search_model_versions("name='cxr'")}
    aliases = client.get_registered_model("cxr").aliases
    run_id = versions["2"][0]
    text = Path(client.download_artifacts(run_id, "model/weights.txt", str(tmp))).read_text()
    return {"versions": versions, "aliases": aliases, "artifact": text}


def test_mlflow_and_feedback_are_restored_from_s3_after_the_databases_are_dropped(tmp_path, s3):
    from mlflow import MlflowClient

    with postgres_server() as server:
        admin = server.url.replace("postgresql+psycopg2://", "postgresql://")
        sql = server.sql

        for db in DATABASES:
            sql(f"CREATE DATABASE {db}")
        backend = server.url.rsplit("/", 1)[0] + "/mlflow"  # psycopg2 (SQLAlchemy 2.1 picks psycopg 3)
        feedback_url = admin.rsplit("/", 1)[0] + "/feedback_production"
        images = S3Images("chexops-images", "production")  # as production keeps them (MinIO in the cluster)
        store = FeedbackStore(feedback_url, images=images)
        kept = fill(store)
        store.close()
        kept_images = [o["Key"] for o in s3.list_objects_v2(Bucket="chexops-images").get("Contents", [])]
        assert len(kept_images) == len(kept)  # the images are objects, not rows

        with mlflow_server(tmp_path / "mlflow", backend, artifacts="s3://mlflow/artifacts") as uri:
            client = MlflowClient(uri)
            experiment = client.create_experiment("cxr")
            client.create_registered_model("cxr")
            for i in (1, 2):
                run = client.create_run(experiment)
                (tmp_path / "model").mkdir(exist_ok=True)
                (tmp_path / "model" / "weights.txt").write_text(f"weights of run {i}")
                client.log_artifacts(run.info.run_id, str(tmp_path / "model"), "model")
                client.create_model_version("cxr", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
            client.set_registered_model_alias("cxr", "champion", "2")
            client.set_registered_model_alias("cxr", "previous", "1")
            before = registry_state(uri, tmp_path / "before")
        assert before["aliases"] == {"champion": "2", "previous": "1"} and before["artifact"] == "weights of run 2"
        artifacts = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow").get("Contents", [])]
        assert any(k.endswith("model/weights.txt") for k in artifacts)  # the artifacts are in S3, not on disk

        tools = str(Path(_pg_binary("pg_dump")).parent)
        env = {"PATH": tools + os.pathsep + os.environ["PATH"]}

        def backup(*args: str) -> dict:
            made = run_cli("backup", "run", *args, env=env, home=tmp_path)
            assert made.returncode == 0, made.stderr[-2000:]
            return json.loads(made.stdout)

        by_hand = ["--to", "s3://chexops-backups/nightly", "--bucket", "mlflow", "--bucket", "chexops-images"]
        by_hand += ["--postgres", admin, "--json"]
        by_hand += [x for db in DATABASES for x in ("--database", db)]
        first = backup(*by_hand, "--keep", "2")
        # The CronJob's way: the init container's pg_dump into a folder, then the upload container's own arguments.
        dumps = tmp_path / "backup"
        dumps.mkdir()
        for db in DATABASES:
            dump = [str(Path(tools) / "pg_dump"), "--format=custom", "--no-owner", f"--file={dumps / db}.dump"]
            subprocess.run([*dump, admin.rsplit("/", 1)[0] + "/" + db], check=True, capture_output=True)
        nightly = backup(*[str(dumps) if a == "/backup" else a for a in CRON_ARGS[2:]])
        third = backup(*by_hand, "--keep", "2")
        assert first["deleted"] == nightly["deleted"] == [] and third["deleted"] == [first["location"].rsplit("/")[-1]]
        for made in (nightly, third):
            assert made["buckets"] == {"mlflow": len(artifacts), "chexops-images": len(kept)}
            assert sorted(made["databases"]) == sorted(DATABASES)
        stored = {o["Key"].split("/")[1] for o in s3.list_objects_v2(Bucket="chexops-backups").get("Contents", [])}
        assert stored == {nightly["location"].rsplit("/")[-1], third["location"].rsplit("/")[-1]}  # retention

        # The disaster: both databases dropped, MLflow's artifacts and the clinics' images gone.
        for db in DATABASES:
            sql(f"DROP DATABASE {db} WITH (FORCE)")
        for key in artifacts:
            s3.delete_object(Bucket="mlflow", Key=key)
        for key in kept_images:
            s3.delete_object(Bucket="chexops-images", Key=key)

        # The nightly one by name (the newest is `third`); the newest is what s3://chexops-backups/nightly restores.
        restored = run_cli("backup", "restore", nightly["location"], "--postgres", admin, env=env, home=tmp_path)
        assert restored.returncode == 0, restored.stderr[-2000:]
        with mlflow_server(tmp_path / "mlflow-again", backend, artifacts="s3://mlflow/artifacts") as uri:
            assert registry_state(uri, tmp_path / "after") == before
        store = FeedbackStore(feedback_url, images=images)
        try:
            assert everything(store) == kept
        finally:
            store.close()


def test_restore_without_a_backup_is_exit_2(tmp_path, s3):
    result = run_cli(
        "backup", "restore", "s3://chexops-backups/none", "--postgres", "postgresql://x@127.0.0.1/postgres"
    )
    assert (
        result.returncode == 2 and "there is no complete backup" in result.stderr and "Traceback" not in result.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "http://minio/x", "--dumps", "."], "is not an s3://BUCKET/PREFIX location"),
        (["--to", "s3://chexops-backups/n"], "either as --postgres URL with --database, or as --dumps DIR"),
        (
            ["--to", "s3://chexops-backups/n", "--postgres", "postgresql://x@h/postgres"],
            "needs at least one --database",
        ),
        (["--to", "s3://chexops-backups/n", "--dumps", "/nonexistent/dumps"], "there is no folder of dumps"),
    ],
)
def test_bad_backup_arguments_are_exit_2(tmp_path, args, message):
    result = run_cli("backup", "run", *args, home=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
