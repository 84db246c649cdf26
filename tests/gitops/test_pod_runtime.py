"""The clinic endpoint started the way production's Deployment starts it: the rendered manifest's
environment (field references resolved from the pod's labels and namespace, `$(VAR)` expanded as Kubernetes
does, Secrets as the Ansible role writes them), every emptyDir and Secret mount mapped to a temporary directory,
MinIO's address mapped to a real S3 server (moto) that keeps the images under production's prefix. The probes and
the scrape path answer, the API key comes from the mounted file, and the service writes nowhere but
its mounts (what a read-only root filesystem requires: this test found ONNX Runtime's telemetry
cache under $HOME, hence HOME on the emptyDir)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service_fixtures import ServedModel, start_service
from support import moto_s3

from .render import REPO

API_KEY = "pod-runtime-key-0123456789"


def _state(root: Path) -> set[str]:
    """Untracked and ignored files of the source the service runs from."""
    proc = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "bentos", "training"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(proc.stdout.splitlines())


@pytest.mark.slow
def test_the_service_runs_as_the_deployment_runs_it(env_docs, served_model, tmp_path):
    with moto_s3(tmp_path / "s3", ["chexops-images"]) as s3:
        _run_as_deployed(env_docs, served_model, tmp_path, s3)


def _run_as_deployed(env_docs, served_model, tmp_path, s3):
    (deployment,) = [d for d in env_docs["production"] if d["kind"] == "Rollout"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}

    # Each mount of the pod -> a directory here; a Secret volume gets its items as files.
    mounts: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        local = tmp_path / "pod" / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True)
        mounts[mount["mountPath"]] = local
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume or "secret" in volume, f"{mount['name']}: only emptyDirs and Secrets are mounted"
        if "secret" in volume:
            assert volume["secret"]["secretName"] == "chexops-api-keys"
            for item in volume["secret"]["items"]:
                # As vault_chexops_api_keys_production is written: one clinic:key per line.
                (local / item["path"]).write_text(f"# clinics\nclinic-a:{API_KEY}\nclinic-b:other-key-9876543210\n")

    def local(value: str) -> str:
        for path, here in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if value == path or value.startswith(path.rstrip("/") + "/"):
                return str(here) + value[len(path) :]
        return value

    # The track label is Argo Rollouts' to add (stableMetadata): a promoted pod carries it.
    labels = {**pod["metadata"]["labels"], **deployment["spec"]["strategy"]["canary"]["stableMetadata"]["labels"]}
    secrets = {
        ("chexops-feedback-db", "url"): f"sqlite:///{tmp_path / 'feedback.db'}",  # PostgreSQL in the cluster
        ("chexops-images-s3", "AWS_ACCESS_KEY_ID"): "moto-key-id",
        ("chexops-images-s3", "AWS_SECRET_ACCESS_KEY"): "moto-any-value",
    }
    minio = "http://minio.platform.svc.cluster.local:9000"
    env = {}
    for var in container["env"]:
        if "value" in var:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"])  # as Kubernetes
            env[var["name"]] = s3["endpoint"] if value == minio else local(value)
        elif "fieldRef" in var["valueFrom"]:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            if path == "metadata.namespace":
                env[var["name"]] = deployment["metadata"]["namespace"]
            elif path.startswith("metadata.annotations['"):
                env[var["name"]] = pod["metadata"]["annotations"][path.removeprefix("metadata.annotations['")[:-2]]
            else:
                env[var["name"]] = labels[path.removeprefix("metadata.labels['").removesuffix("']")]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
    assert env["CHEXOPS_ENVIRONMENT"] == "production" and env["CHEXOPS_TRACK"] == "stable"
    assert env["CHEXOPS_IMAGE_STORE"] == "s3://chexops-images/production"

    # In the image the model is inside the Bento; here it is put into the (mapped) BENTOML_HOME.
    bentoml_home = Path(env["BENTOML_HOME"])
    shutil.copytree(served_model.home / "bentoml" / "models", bentoml_home / "models")
    env.update({"CHEXOPS_API_KEYS": "", "CHEXOPS_RATE_LIMIT": "6000"})
    assert str(tmp_path / "pod") in env["HOME"], "HOME must be on a mount (libraries write caches there)"

    before = _state(REPO)
    svc = start_service(ServedModel(tmp_path, served_model.tag), api_key=API_KEY, **env)
    try:
        port = "http"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = container[probe]["httpGet"]
            assert get["port"] == port
            assert httpx.get(f"{svc.url}{get['path']}", timeout=10).status_code == 200, probe
        image = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96), dtype=np.uint8)).save(image, "PNG")
        files = {"image": ("x.png", image.getvalue(), "image/png")}
        answer = httpx.post(f"{svc.url}/predict", files=files, headers=svc.headers, timeout=60)
        assert answer.status_code == 200, answer.text
        request_id = answer.json()["request_id"]
        key, listed, deadline = f"production/{request_id[:2]}/{request_id}.png", [], time.monotonic() + 20
        while key not in listed and time.monotonic() < deadline:
            found = s3["client"].list_objects_v2(Bucket="chexops-images", Prefix="production/")  # moto's state is
            listed = [o["Key"] for o in found.get("Contents", [])]  # per process: other tests' objects may be there
            time.sleep(0.1)
        assert listed == [key], listed  # the kept image, in MinIO's bucket under production's prefix
        assert httpx.post(f"{svc.url}/predict", files=files, timeout=60).status_code == 401
        scrape = pod["metadata"]["annotations"]["prometheus.io/path"]
        metrics = httpx.get(f"{svc.url}{scrape}", timeout=10)
        assert metrics.status_code == 200 and "chexops_predictions_total" in metrics.text
        if 'environment="' in metrics.text:  # the service labels its metrics (CHEXOPS_ENVIRONMENT, CHEXOPS_TRACK)
            assert 'environment="production"' in metrics.text and 'track="stable"' in metrics.text
    finally:
        svc.stop()
    assert _state(REPO) == before, "the service wrote into its source tree (read-only in the image)"
    assert any(bentoml_home.rglob("*")), "BentoML wrote nothing into its home: is BENTOML_HOME still read?"
