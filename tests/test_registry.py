"""`chexops register`: the quality gate and the MLflow Model Registry, against real `mlflow server`
processes (SQLite backend; and PostgreSQL started by the test), in both directions."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from chexops.evaluation.gate import (
    GateConfig,
    check_evidence,
    check_mean_auroc,
    check_regression,
    check_slice_gap,
    judge,
    load_gate_config,
)
from chexops.evaluation.records import index
from mlflow_fixtures import mlflow_server, postgres_cluster, synth_dataset, train_run, write_config
from support import ROOT, chexops, chexops_json, run_cli

NAME = "chexops-cxr"
# The tiny test model: a lower bar than the default 0.8, slices of synthetic data are small and noisy.
GATE = ("--min-mean-auroc", "0.7", "--max-slice-gap", "0.2", "--min-slice-positives", "15", "--max-regression", "0.02")


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow-sqlite")
    with mlflow_server(base, f"sqlite:///{base / 'mlflow.db'}") as uri:
        yield uri


@pytest.mark.slow
def test_good_model_passes_worse_is_refused_second_good_is_compared_with_production(tmp_path_factory, sqlite_server):
    home = tmp_path_factory.mktemp("registry-home")
    env = {"CHEXOPS_HOME": str(home), "MLFLOW_TRACKING_URI": sqlite_server}
    client = MlflowClient(sqlite_server)
    synth = synth_dataset(tmp_path_factory)
    good = write_config(home / "good.yaml", synth, name="good")

    # A good model; registering before evaluating is refused as a usage error.
    first = train_run(good, **env).run_id
    code, _, err = chexops("register", "--run", first, **env)
    assert code == 2 and "has not been evaluated" in err and "Traceback" not in err
    # Evaluated on validation only (a config without a test split): the gate refuses that evidence, saying why.
    on_val = chexops_json(
        "evaluate",
        "--run",
        first,
        "--config",
        str(write_config(home / "no-test.yaml", synth, data={"test_csv": None})),
        "--bootstrap",
        "50",
        "--hard-cases",
        "0",
        **env,
    )
    assert on_val["split"] == "validation"
    code, out, err = chexops("register", "--run", first, *GATE, "--json", **env)
    assert code == 3 and "held_out" in err and "chose the epoch and the thresholds" in err and "Traceback" not in err
    assert json.loads(out)["evaluation_id"] == on_val["evaluation_id"] and json.loads(out)["version"] is None

    # Evaluated on the held-out test split: the latest evaluation is the one judged, and named.
    evaluated = chexops_json("evaluate", "--run", first, "--bootstrap", "50", "--hard-cases", "5", **env)
    reg = chexops_json("register", "--run", first, *GATE, **env)
    assert reg["passed"] and (reg["model"], reg["version"], reg["alias"]) == (NAME, "1", "candidate")
    assert reg["evaluation_id"] == evaluated["evaluation_id"] != on_val["evaluation_id"]
    assert [g["criterion"] for g in reg["gate"]] == ["held_out", "min_mean_auroc", "max_slice_gap", "max_regression"]
    assert all(g["passed"] for g in reg["gate"]) and reg["production"] is None
    mean_gate = next(g for g in reg["gate"] if g["criterion"] == "min_mean_auroc")
    assert mean_gate["value"] == pytest.approx(evaluated["mean_auroc_ci"][0], abs=1e-6)  # the interval's lower bound
    version = client.get_model_version_by_alias(NAME, "candidate")
    assert version.version == "1" and version.run_id == first and version.source == f"runs:/{first}/checkpoint"
    tags = version.tags
    run_tags = client.get_run(first).data.tags
    assert float(tags["mean_auroc"]) == pytest.approx(reg["mean_auroc"], abs=1e-6)
    assert tags["data_version"] == run_tags["data_version"] and tags["data_sha256"] == run_tags["data_sha256"]
    assert tags["git_commit"] == run_tags["git_commit"] and tags["run_id"] == first
    assert (
        tags["evaluation_id"] == evaluated["evaluation_id"] and tags["eval_split_version"] == evaluated["split_version"]
    )
    assert "auroc.Pleural_Effusion" in tags and json.loads(tags["thresholds"]).keys() >= {"Edema", "Pleural Effusion"}
    assert version.current_stage in (None, "None")  # stages are never used
    assert run_tags["gate"] == "passed" and run_tags["registered_model"] == f"{NAME}/1"
    mlflow.set_tracking_uri(sqlite_server)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@candidate", dst_path=str(home / "download")))
    assert (local / "model.pt").is_file()  # what `chexops export` reads

    # It goes to production (by hand here; `chexops promote` later).
    client.set_registered_model_alias(NAME, "production", "1")

    # A deliberately worse model (never learns) is refused: exit 3, nothing registered, aliases untouched.
    worse = train_run(
        write_config(home / "worse.yaml", synth, name="worse", train={"lr": 0.0, "epochs": 1, "max_steps": 1}), **env
    ).run_id
    chexops_json("evaluate", "--run", worse, "--bootstrap", "20", "--hard-cases", "5", **env)
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
    second = train_run(write_config(home / "good2.yaml", synth, name="good2"), **env).run_id
    chexops_json("evaluate", "--run", second, "--bootstrap", "50", "--hard-cases", "5", **env)
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

    # The second model evaluated on other held-out data (300 of the 400 test patients): production's
    # number (on all 400) is never compared with it.
    frame = pd.read_csv(synth / "CheXpert-v1.0-small" / "valid.csv")
    subset = home / "valid-300.csv"
    frame.iloc[:300].to_csv(subset, index=False)
    other = chexops_json(
        "evaluate",
        "--run",
        second,
        "--config",
        str(write_config(home / "other.yaml", synth, data={"test_csv": str(subset)})),
        "--bootstrap",
        "50",
        "--hard-cases",
        "0",
        **env,
    )
    assert (
        other["split"] == "test"
        and other["split_version"] != client.get_model_version(NAME, "1").tags["eval_split_version"]
    )
    # Told not to re-evaluate production: refused, saying why.
    strict = home / "strict-gate.yaml"
    strict.write_text(yaml.safe_dump({"gate": {"reevaluate_production": False}}))
    code, out, err = chexops(
        "register",
        "--run",
        second,
        "--evaluation",
        other["evaluation_id"],
        "--gate-config",
        str(strict),
        *GATE,
        "--json",
        **env,
    )
    assert code == 3, err[-2000:]
    regression = next(g for g in json.loads(out)["gate"] if g["criterion"] == "max_regression")
    assert (
        not regression["passed"]
        and regression["value"] is None
        and "reevaluate_production is off" in regression["detail"]
    )
    # By default production's run is evaluated on the candidate's test data, and that is compared.
    before = {e["id"] for e in index(client.get_run(first))}
    compared = chexops_json("register", "--run", second, "--evaluation", other["evaluation_id"], *GATE, **env)
    regression = next(g for g in compared["gate"] if g["criterion"] == "max_regression")
    assert regression["value"] is not None and "evaluated now on the candidate's data" in regression["detail"]
    new = [e for e in index(client.get_run(first)) if e["id"] not in before]
    assert len(new) == 1 and new[0]["split_version"] == other["split_version"]
    assert compared["production"]["mean_auroc"] == pytest.approx(new[0]["mean_auroc"], abs=1e-6)
    assert regression["value"] == pytest.approx(new[0]["mean_auroc"] - other["mean_auroc"], abs=1e-5)
    assert client.get_model_version(NAME, "2").tags["evaluation_id"] == other["evaluation_id"]


@pytest.mark.slow
def test_registry_on_postgresql(tmp_path_factory):
    """The same pass and refusal with PostgreSQL as MLflow's backend store (a cluster started here)."""
    base = tmp_path_factory.mktemp("mlflow-pg")
    with postgres_cluster() as url, mlflow_server(base, url) as uri:
        env = {"CHEXOPS_HOME": str(base / "home"), "MLFLOW_TRACKING_URI": uri}
        synth = synth_dataset(tmp_path_factory)
        # What is tested here is the store, not the model: a few steps of training, a permissive gate.
        run = train_run(
            write_config(base / "pg.yaml", synth, name="pg", train={"epochs": 1, "max_steps": 5}), **env
        ).run_id
        chexops_json("evaluate", "--run", run, "--bootstrap", "20", "--hard-cases", "3", **env)
        reg = chexops_json("register", "--run", run, "--min-mean-auroc", "0", "--max-slice-gap", "1", **env)
        assert (reg["version"], reg["alias"]) == ("1", "candidate")
        client = MlflowClient(uri)
        assert client.get_model_version_by_alias(NAME, "candidate").run_id == run
        code, out, _ = chexops("register", "--run", run, "--min-mean-auroc", "0.999", "--json", **env)
        assert code == 3 and json.loads(out)["version"] is None
        assert len(client.search_model_versions(f"name = '{NAME}'")) == 1


# The gate's criteria as pure functions.

EVALUATION = {
    "mean_auroc": 0.85,
    "mean_auroc_ci": [0.82, 0.88],
    "bootstrap_unit": "patient",
    "mean_over": ["Edema"],
    "split": "test",
    "test_source": "test_csv",
    "test_patients_in_train": 0,
    "split_version": "s1",
    "slices": [
        {"slice": "Sex=Male", "n": 100, "min_positives": 40, "mean_auroc": 0.84, "gap": -0.01},
        {"slice": "Frontal/Lateral=Lateral", "n": 50, "min_positives": 30, "mean_auroc": 0.70, "gap": -0.15},
        {"slice": "Age=<40", "n": 500, "min_positives": 5, "mean_auroc": 0.40, "gap": -0.45},
    ],
}


def test_slice_gap_judges_slices_by_their_positives_not_their_images():
    verdict = check_slice_gap(EVALUATION, 0.1, 30)
    assert not verdict.passed and verdict.value == pytest.approx(0.15) and "Frontal/Lateral=Lateral" in verdict.detail
    # Age=<40 has the most images (500) but only 5 positives of a finding: reported, never judged.
    assert "not judged" in verdict.detail and "Age=<40" in verdict.detail.split("not judged")[1]
    assert check_slice_gap(EVALUATION, 0.1, 31).passed  # the Lateral slice (30 positives) is no longer judged
    assert check_slice_gap({"slices": []}, 0.1, 30).value is None


def test_mean_auroc_is_judged_on_the_lower_bound_of_its_interval():
    # The point estimate (0.85) clears 0.83, the interval's lower bound (0.82) does not: refused.
    verdict = check_mean_auroc(EVALUATION, 0.83)
    assert not verdict.passed and verdict.value == pytest.approx(0.82) and "lower bound" in verdict.detail
    assert check_mean_auroc(EVALUATION, 0.82).passed
    # Without an interval there is nothing to judge the lower bound on: refused, saying how to get one.
    bare = check_mean_auroc({**EVALUATION, "mean_auroc_ci": None}, 0.5)
    assert not bare.passed and "--bootstrap" in bare.detail


def test_validation_only_evidence_is_refused_unless_accepted():
    on_validation = {**EVALUATION, "split": "validation", "test_source": None}
    refused = check_evidence(on_validation, accept_validation=False)
    assert (
        not refused.passed
        and "chose the epoch and the thresholds" in refused.detail
        and "accept_validation_evidence" in refused.detail
    )
    assert check_evidence(on_validation, accept_validation=True).passed
    held_out = check_evidence(EVALUATION, accept_validation=False)
    assert held_out.passed and held_out.detail == "metrics on the test split (test_csv)"
    # an npz dataset's own test arrays carry no test_source: the detail says nothing rather than "(?)"
    npz_test = check_evidence({**EVALUATION, "test_source": None}, accept_validation=False)
    assert npz_test.passed and npz_test.detail == "metrics on the test split"
    leaky = check_evidence({**EVALUATION, "test_patients_in_train": 3}, accept_validation=True)
    assert not leaky.passed and "3 patients" in leaky.detail


def test_regression_is_only_measured_on_the_same_data():
    assert check_regression(EVALUATION, None, 0.02).passed
    same = {"version": "3", "split_version": "s1", "mean_auroc": 0.9}
    worse = check_regression(EVALUATION, same, 0.02)
    assert not worse.passed and worse.value == pytest.approx(0.05)
    assert check_regression(EVALUATION, {**same, "mean_auroc": 0.86}, 0.02).passed
    # A higher production number measured on other data is never compared (nor a lower one).
    for theirs in (0.99, 0.5):
        other = check_regression(EVALUATION, {**same, "split_version": "s0", "mean_auroc": theirs}, 0.02)
        assert not other.passed and other.value is None and "other data" in other.detail
    reason = check_regression(
        EVALUATION, {**same, "split_version": "s0", "reason": "reevaluate_production is off"}, 0.02
    )
    assert not reason.passed and "reevaluate_production is off" in reason.detail
    assert not check_regression({**EVALUATION, "mean_auroc": None}, same, 0.02).passed


def test_judge_and_limits():
    verdicts = judge(EVALUATION, None, GateConfig(min_mean_auroc=0.9, max_slice_gap=0.2))
    assert [(v.criterion, v.passed) for v in verdicts] == [
        ("held_out", True),
        ("min_mean_auroc", False),
        ("max_slice_gap", True),
        ("max_regression", True),
    ]
    config = load_gate_config(ROOT / "configs" / "gate.yaml", {"max_regression": 0.05, "min_mean_auroc": None})
    assert config == GateConfig(max_regression=0.05)  # the file holds the defaults; given flags override it
    from chexops.core.errors import ConfigError

    with pytest.raises(ConfigError, match="min_mean_auroc"):
        load_gate_config(None, {"min_mean_auroc": 1.5})


def test_the_feedback_hold_out_is_tagged_on_the_version_not_judged():
    """An evaluation's source hold-outs travel to the registry version as `holdout.<source>` (measurable
    findings only) and leave the gate's verdicts as they were."""
    from types import SimpleNamespace

    from chexops.registry.register import version_tags

    holdouts = {
        "feedback": {
            "n": 40,
            "mean_auroc": 0.61,
            "not_measurable": ["Pleural Other"],
            "per_label": {
                "Pleural Effusion": {"n": 40, "positives": 9, "measurable": True, "auroc": 0.83},
                "Pleural Other": {"n": 40, "positives": 0, "measurable": False, "auroc": None},
            },
        }
    }
    run = SimpleNamespace(info=SimpleNamespace(run_id="r1"), data=SimpleNamespace(tags={}))
    tags = version_tags(run, {**EVALUATION, "holdouts": holdouts}, {"rule": "youden", "thresholds": {}}, [])
    assert json.loads(tags["holdout.feedback"]) == {
        "n": 40,
        "mean_auroc": 0.61,
        "not_measurable": ["Pleural Other"],
        "auroc": {"Pleural_Effusion": 0.83},
    }
    assert "holdout.feedback" not in version_tags(run, EVALUATION, {"rule": "youden", "thresholds": {}}, [])
    verdicts = judge(
        {**EVALUATION, "holdouts": {"feedback": {**holdouts["feedback"], "mean_auroc": 0.1}}}, None, GateConfig()
    )
    assert [v.to_dict() for v in verdicts] == [v.to_dict() for v in judge(EVALUATION, None, GateConfig())]
