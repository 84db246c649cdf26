"""`chexops register`: the quality gate and the MLflow Model Registry, against real `mlflow server`
processes (SQLite backend; and PostgreSQL started by the test), in both directions."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from chexops.gate import GateConfig, check_regression, check_slice_gap, judge, load_gate_config
from support import ROOT, run_cli
from mlflow_fixtures import chexops, chexops_json, mlflow_server, postgres_cluster, synth_dataset, train_run, write_config

NAME = "chexops-cxr"
# The tiny test model: a lower bar than the default 0.8, slices of synthetic data are small and noisy.
GATE = ("--min-mean-auroc", "0.7", "--max-slice-gap", "0.2", "--min-slice-size", "40", "--max-regression", "0.02")


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow-sqlite")
    with mlflow_server(base, f"sqlite:///{base / 'mlflow.db'}") as uri:
        yield uri


def test_good_model_passes_worse_is_refused_second_good_is_compared_with_production(tmp_path_factory, sqlite_server):
    home = tmp_path_factory.mktemp("registry-home")
    env = {"CHEXOPS_HOME": str(home), "MLFLOW_TRACKING_URI": sqlite_server}
    client = MlflowClient(sqlite_server)
    synth = synth_dataset(tmp_path_factory)
    good = write_config(home / "good.yaml", synth, name="good")

    # A good model; registering before evaluating is refused as a usage error.
    first = train_run(good, **env)["run_id"]
    code, _, err = chexops("register", "--run", first, **env)
    assert code == 2 and "has not been evaluated" in err and "Traceback" not in err
    chexops_json("evaluate", "--run", first, "--bootstrap", "50", "--hard-cases", "5", **env)
    reg = chexops_json("register", "--run", first, *GATE, **env)
    assert reg["passed"] and (reg["model"], reg["version"], reg["alias"]) == (NAME, "1", "candidate")
    assert [g["criterion"] for g in reg["gate"]] == ["min_mean_auroc", "max_slice_gap", "max_regression"]
    assert all(g["passed"] for g in reg["gate"]) and reg["production"] is None
    version = client.get_model_version_by_alias(NAME, "candidate")
    assert version.version == "1" and version.run_id == first and version.source == f"runs:/{first}/checkpoint"
    tags = version.tags
    run_tags = client.get_run(first).data.tags
    assert float(tags["mean_auroc"]) == pytest.approx(reg["mean_auroc"], abs=1e-6)
    assert tags["data_version"] == run_tags["data_version"] and tags["data_sha256"] == run_tags["data_sha256"]
    assert tags["git_commit"] == run_tags["git_commit"] and tags["run_id"] == first
    assert "auroc.Pleural_Effusion" in tags and json.loads(tags["thresholds"]).keys() >= {"Edema", "Pleural Effusion"}
    assert version.current_stage in (None, "None")  # stages are never used
    assert run_tags["gate"] == "passed" and run_tags["registered_model"] == f"{NAME}/1"
    mlflow.set_tracking_uri(sqlite_server)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@candidate", dst_path=str(home / "download")))
    assert (local / "model.pt").is_file()  # what `chexops export` reads

    # It goes to production (by hand here; `chexops promote` later).
    client.set_registered_model_alias(NAME, "production", "1")

    # A deliberately worse model (never learns) is refused: exit 3, nothing registered, aliases untouched.
    worse = train_run(write_config(home / "worse.yaml", synth, name="worse", train={"lr": 0.0, "epochs": 1, "max_steps": 1}), **env)["run_id"]
    chexops_json("evaluate", "--run", worse, "--bootstrap", "0", "--hard-cases", "5", **env)
    refused = run_cli("register", "--run", worse, *GATE, "--json", env=env)
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr and "quality gate refused" in refused.stderr and "FAIL" in refused.stderr
    verdict = json.loads(refused.stdout)
    assert verdict["passed"] is False and verdict["version"] is None
    failed = {g["criterion"] for g in verdict["gate"] if not g["passed"]}
    assert failed >= {"min_mean_auroc", "max_regression"}
    regression = next(g for g in verdict["gate"] if g["criterion"] == "max_regression")
    assert regression["value"] > 0.1 and "production version 1" in regression["detail"]
    assert [v.version for v in client.search_model_versions(f"name = '{NAME}'")] == ["1"]
    assert client.get_registered_model(NAME).aliases == {"candidate": "1", "production": "1"}
    assert client.get_run(worse).data.tags["gate"] == "refused"

    # A second good model becomes version 2; the gate compared it with production (version 1).
    second = train_run(write_config(home / "good2.yaml", synth, name="good2"), **env)["run_id"]
    chexops_json("evaluate", "--run", second, "--bootstrap", "0", "--hard-cases", "5", **env)
    code, out, err = chexops("register", "--run", second, *GATE, **env)
    assert code == 0, err[-2000:]
    assert "max_regression" in out and "production version 1" in out and "PASS" in out and "version 2" in out
    assert client.get_registered_model(NAME).aliases == {"candidate": "2", "production": "1"}
    v2 = client.get_model_version(NAME, "2")
    comparison = next(g for g in json.loads(v2.tags["gate"]) if g["criterion"] == "max_regression")
    assert comparison["value"] is not None and comparison["passed"]

    # Registering the same run again reuses its version instead of making a duplicate.
    again = chexops_json("register", "--run", second, *GATE, **env)
    assert again["version"] == "2" and again["reused"] is True
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2


def test_registry_on_postgresql(tmp_path_factory):
    """The same pass and refusal with PostgreSQL as MLflow's backend store (a cluster started here)."""
    base = tmp_path_factory.mktemp("mlflow-pg")
    with postgres_cluster() as url, mlflow_server(base, url) as uri:
        env = {"CHEXOPS_HOME": str(base / "home"), "MLFLOW_TRACKING_URI": uri}
        synth = synth_dataset(tmp_path_factory)
        # What is tested here is the store, not the model: a few steps of training, a permissive gate.
        run = train_run(write_config(base / "pg.yaml", synth, name="pg", train={"epochs": 1, "max_steps": 5}), **env)["run_id"]
        chexops_json("evaluate", "--run", run, "--bootstrap", "0", "--hard-cases", "3", **env)
        reg = chexops_json("register", "--run", run, "--min-mean-auroc", "0", "--max-slice-gap", "1", **env)
        assert (reg["version"], reg["alias"]) == ("1", "candidate")
        client = MlflowClient(uri)
        assert client.get_model_version_by_alias(NAME, "candidate").run_id == run
        code, out, _ = chexops("register", "--run", run, "--min-mean-auroc", "0.999", "--json", **env)
        assert code == 3 and json.loads(out)["version"] is None
        assert len(client.search_model_versions(f"name = '{NAME}'")) == 1


# The gate's criteria as pure functions.

EVALUATION = {
    "mean_auroc": 0.85, "mean_over": ["Edema"], "split": "test", "data_version": "d1",
    "slices": [{"slice": "Sex=Male", "n": 100, "mean_auroc": 0.84, "gap": -0.01},
               {"slice": "Frontal/Lateral=Lateral", "n": 50, "mean_auroc": 0.70, "gap": -0.15},
               {"slice": "Age=<40", "n": 5, "mean_auroc": 0.40, "gap": -0.45}],
}


def test_slice_gap_judges_large_enough_slices_only():
    verdict = check_slice_gap(EVALUATION, 0.1, 30)
    assert not verdict.passed and verdict.value == pytest.approx(0.15) and "Frontal/Lateral=Lateral" in verdict.detail
    assert "Age=<40" in verdict.detail  # reported as not judged
    assert check_slice_gap(EVALUATION, 0.1, 60).passed
    assert check_slice_gap({"slices": []}, 0.1, 30).value is None


def test_regression_against_production():
    assert check_regression(EVALUATION, None, 0.02).passed
    worse = check_regression(EVALUATION, {"version": "3", "mean_auroc": 0.9, "data_version": "d0"}, 0.02)
    assert not worse.passed and worse.value == pytest.approx(0.05) and "other data" in worse.detail
    assert check_regression(EVALUATION, {"version": "3", "mean_auroc": 0.86, "data_version": "d1"}, 0.02).passed
    assert not check_regression({"mean_auroc": None}, {"version": "3", "mean_auroc": 0.86}, 0.02).passed


def test_judge_and_limits():
    verdicts = judge(EVALUATION, None, GateConfig(min_mean_auroc=0.9, max_slice_gap=0.2))
    assert [(v.criterion, v.passed) for v in verdicts] == [("min_mean_auroc", False), ("max_slice_gap", True), ("max_regression", True)]
    config = load_gate_config(ROOT / "configs" / "gate.yaml", {"max_regression": 0.05, "min_mean_auroc": None})
    assert config == GateConfig(max_regression=0.05)  # the file holds the defaults; given flags override it
    from chexops.errors import ConfigError

    with pytest.raises(ConfigError, match="min_mean_auroc"):
        load_gate_config(None, {"min_mean_auroc": 1.5})
