"""`chexops.registry.refs.resolve_local`: a registry reference read from the SQLite store without MLflow (for
`chexops serve`'s start-up) answers what MLflow's own resolution answers, or nothing where it cannot be sure.
The registry is a real MLflow SQLite store, written by MLflow's client."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chexops.registry import refs
from support import ROOT, child_env

NAME = "chexops-cxr"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Versions 1-3 of NAME (3 deleted), aliases candidate → 2 and staging → 1, tags on version 2."""
    from mlflow import MlflowClient

    home = tmp_path_factory.mktemp("registry-home")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("local-refs", artifact_location=str(home / "artifacts"))
    runs = [client.create_run(experiment).info.run_id for _ in range(3)]
    client.create_registered_model(NAME)
    for run_id in runs:
        client.create_model_version(NAME, f"runs:/{run_id}/checkpoint", run_id=run_id)
    client.set_model_version_tag(NAME, "2", "gate", '[{"criterion": "mean_auroc", "passed": true}]')
    client.set_model_version_tag(NAME, "2", "export.fp32_sha256", "ab" * 32)
    client.set_registered_model_alias(NAME, "candidate", "2")
    client.set_registered_model_alias(NAME, "staging", "1")
    client.delete_model_version(NAME, "3")
    return home


@pytest.fixture
def registry(store, monkeypatch):
    """The store as this test's tracking store (CHEXOPS_HOME is each test's own)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    return store


@pytest.mark.parametrize(
    "reference", [f"models:/{NAME}@candidate", f"models:/{NAME}@staging", f"models:/{NAME}/1", f"models:/{NAME}/2"]
)
def test_a_reference_read_locally_is_what_mlflow_resolves(registry, reference):
    local = refs.resolve_local(reference)
    assert local is not None
    assert local == refs.resolve(reference) and local.version_tags == refs.resolve(reference).version_tags


def test_the_alias_moves_and_the_local_read_follows(registry):
    from mlflow import MlflowClient

    uri = f"sqlite:///{registry / 'mlflow.db'}"
    MlflowClient(uri, registry_uri=uri).set_registered_model_alias(NAME, "candidate", "1")
    try:
        assert refs.resolve_local(f"models:/{NAME}@candidate").version == "1"
    finally:
        MlflowClient(uri, registry_uri=uri).set_registered_model_alias(NAME, "candidate", "2")
    assert refs.resolve_local(f"models:/{NAME}@candidate").version == "2"


@pytest.mark.parametrize(
    "reference",
    [
        f"models:/{NAME}@production",  # no such alias: MLflow words the refusal
        f"models:/{NAME}/3",  # deleted
        f"models:/{NAME}/9",
        "models:/other@candidate",
        f"models:/{NAME}@latest",  # MLflow's own meaning
        "runs:/0123456789abcdef0123456789abcdef",
    ],
)
def test_nothing_is_answered_where_mlflow_must_decide(registry, reference):
    assert refs.resolve_local(reference) is None


def test_another_tracking_store_is_left_to_mlflow(registry, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert refs.resolve_local(f"models:/{NAME}@candidate") is None


def test_the_local_read_imports_no_mlflow(registry):
    code = (
        "import sys; from chexops.registry import refs; "
        f"r = refs.resolve_local('models:/{NAME}@candidate'); print(r.version, 'mlflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, env=child_env(registry)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["2", "False"]


def test_an_artifact_of_a_locally_read_reference_comes_from_chexops_store(tmp_path):
    """`resolve_local` never points MLflow at the store, so `download` must: with the store only under
    $CHEXOPS_HOME (no MLFLOW_TRACKING_URI), as under `bentoml build`, the export's file is found (it was not:
    MLflow looked in ./mlruns and the Bento import said the run had no exported ONNX files)."""
    from mlflow import MlflowClient

    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    run_id = client.create_run(client.create_experiment("dl", artifact_location=str(home / "artifacts"))).info.run_id
    client.log_text(run_id, "onnx bytes", "export/model.onnx")
    client.create_registered_model(NAME)
    client.create_model_version(NAME, f"runs:/{run_id}/checkpoint", run_id=run_id)
    client.set_registered_model_alias(NAME, "candidate", "1")
    code = (
        "import sys; from pathlib import Path; from chexops.registry import refs\n"
        f"ref = refs.resolve_local('models:/{NAME}@candidate'); assert ref is not None\n"
        "got = refs.download(ref, 'export/model.onnx', Path(sys.argv[1]), required=False)\n"
        "print(got.read_text() if got else 'MISSING')\n"
    )
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "dst")],
        cwd=cwd,
        env=child_env(home),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "onnx bytes", proc.stderr[-2000:]
