"""The platform's backup that restores (`chexops backup run` / `restore`): a real MLflow server (PostgreSQL backend,
artifacts in S3 on a real moto server) and a feedback store on the same PostgreSQL are backed up to an S3 backup
bucket, the databases are dropped and the artifact bucket emptied, and after the restore MLflow's registered
versions, aliases and artifacts and every feedback with its image are back; retention keeps the newest backups."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from chexops.core.processes import free_port
from chexops.feedback.store import FeedbackStore
from mlflow_fixtures import _pg_binary, mlflow_server, postgres_server
from support import environment, run_cli
from test_backup import everything, fill

pytestmark = pytest.mark.slow


@pytest.fixture
def s3():
    """A real S3 server (moto's server mode) with MLflow's bucket and the backup bucket; yields a boto3 client."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
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

            client = boto3.client("s3")
            for bucket in ("mlflow", "backups"):
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

        for db in ("mlflow", "feedback_production"):
            sql(f"CREATE DATABASE {db}")
        backend = server.url.rsplit("/", 1)[0] + "/mlflow"  # psycopg2 (SQLAlchemy 2.1 picks psycopg 3)
        feedback_url = admin.rsplit("/", 1)[0] + "/feedback_production"
        store = FeedbackStore(feedback_url)
        kept = fill(store)
        store.close()

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
        args = ["backup", "run", "--to", "s3://backups/nightly", "--bucket", "mlflow", "--keep", "1"]
        args += ["--postgres", admin, "--database", "mlflow", "--database", "feedback_production", "--json"]
        first = run_cli(*args, env=env, home=tmp_path)
        assert first.returncode == 0, first.stderr[-2000:]
        made = run_cli(*args, env=env, home=tmp_path)
        assert made.returncode == 0, made.stderr[-2000:]
        old, new = json.loads(first.stdout), json.loads(made.stdout)
        assert new["deleted"] == [old["location"].rsplit("/", 1)[1]]  # retention: --keep 1
        assert new["buckets"] == {"mlflow": len(artifacts)} and sorted(new["databases"]) == sorted(
            ["mlflow", "feedback_production"]
        )
        stored = {o["Key"] for o in s3.list_objects_v2(Bucket="backups").get("Contents", [])}
        assert stored and all(k.startswith(new["location"].split("/", 3)[3] + "/") for k in stored)

        # The disaster: both databases dropped, MLflow's artifacts gone.
        for db in ("mlflow", "feedback_production"):
            sql(f"DROP DATABASE {db} WITH (FORCE)")
        for key in artifacts:
            s3.delete_object(Bucket="mlflow", Key=key)

        restored = run_cli("backup", "restore", "s3://backups/nightly", "--postgres", admin, env=env, home=tmp_path)
        assert restored.returncode == 0, restored.stderr[-2000:]
        with mlflow_server(tmp_path / "mlflow-again", backend, artifacts="s3://mlflow/artifacts") as uri:
            assert registry_state(uri, tmp_path / "after") == before
        store = FeedbackStore(feedback_url)
        try:
            assert everything(store) == kept
        finally:
            store.close()


def test_restore_without_a_backup_is_exit_2(tmp_path, s3):
    result = run_cli("backup", "restore", "s3://backups/none", "--postgres", "postgresql://x@127.0.0.1/postgres")
    assert (
        result.returncode == 2 and "there is no complete backup" in result.stderr and "Traceback" not in result.stderr
    )
