"""`chexops evaluate`: metrics, thresholds, calibration, slices, hard cases, plots and card, logged to
the training run; and the bad inputs that must end in a clear message and exit code 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from chexops.data.chexpert import check_images, image_paths, read_chexpert_csv
from chexops.evaluate import choose_threshold, expected_calibration_error, parse_run_ref
from chexops.labels import CHEXPERT_LABELS, META_COLUMNS
from mlflow_fixtures import chexops, chexops_json, synth_dataset, train_run, write_config

SLICES = {"Sex=Female", "Sex=Male", "Age=<40", "Age=40-59", "Age=60-79", "Age=>=80", "AP/PA=AP", "AP/PA=PA",
          "Frontal/Lateral=Frontal", "Frontal/Lateral=Lateral"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny model trained on all views (laterals included), evaluated by both threshold rules
    (sensitivity first, so that the run ends up holding the Youden evaluation)."""
    home = tmp_path_factory.mktemp("eval-home")
    env = {"CHEXOPS_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    synth = synth_dataset(tmp_path_factory)
    config = write_config(home / "tiny.yaml", synth)
    summary = train_run(config, **env)
    run = summary["run_id"]
    sensitivity = chexops_json("evaluate", "--run", run, "--threshold-rule", "sensitivity", "--target-sensitivity", "0.9",
                               "--bootstrap", "20", **env)
    youden = chexops_json("evaluate", "--run", f"runs:/{run}/checkpoint/model.pt", "--bootstrap", "200", "--hard-cases", "12", **env)
    return {"home": home, "env": env, "config": config, "synth": synth, "summary": summary, "run": run,
            "youden": youden, "sensitivity": sensitivity, "client": MlflowClient(env["MLFLOW_TRACKING_URI"])}


def test_evaluation_is_logged_to_the_training_run(trained, tmp_path):
    client, run_id, result = trained["client"], trained["run"], trained["youden"]
    run = client.get_run(run_id)
    assert run.data.tags["evaluated"] == "true"
    metrics = run.data.metrics
    assert metrics["eval_mean_auroc"] == pytest.approx(result["mean_auroc"], abs=1e-6)
    for label in ("Atelectasis", "Cardiomegaly", "Pleural_Effusion", "No_Finding"):
        for name in ("auroc", "auprc", "sensitivity", "specificity", "ece", "threshold"):
            assert f"eval_{name}.{label}" in metrics
    names = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {f"evaluation/{n}" for n in ("metrics.json", "thresholds.json", "roc.png", "reliability.png", "model_card.md", "hard_cases")} <= names

    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation", dst_path=str(tmp_path),
                                                     tracking_uri=trained["env"]["MLFLOW_TRACKING_URI"]))
    thresholds = json.loads((local / "thresholds.json").read_text())
    assert thresholds["rule"] == "youden" and set(thresholds["thresholds"]) == set(CHEXPERT_LABELS)
    assert thresholds["thresholds"] == result["thresholds"]
    stored = json.loads((local / "metrics.json").read_text())
    assert stored["mean_auroc"] == result["mean_auroc"] and stored["per_label"].keys() == result["per_label"].keys()
    for png in ("roc.png", "reliability.png"):
        data = (local / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    card = (local / "model_card.md").read_text()
    for heading in ("## Model", "## Data", "## Metrics", "## Slices", "## Intended use", "## Limits"):
        assert heading in card
    assert run_id in card and "Frontal/Lateral=Lateral" in card and "synthetic" in card


def test_metrics_are_sane_and_agree_with_training(trained):
    result, summary = trained["youden"], trained["summary"]
    assert {"run_id", "mean_auroc", "thresholds", "per_label", "slices"} <= result.keys()
    assert result["run_id"] == trained["run"] and result["split"] == "test"
    # The same model on the same test split: the evaluation reproduces training's own test AUROC.
    assert result["mean_auroc"] == pytest.approx(summary["test"]["mean_auroc"], abs=1e-5)
    assert result["mean_auroc"] >= 0.7
    lo, hi = result["mean_auroc_ci"]
    assert lo < result["mean_auroc"] < hi
    for label, m in result["per_label"].items():
        assert m["n"] > 0 and 0 <= m["ece"] <= 1 and 0 <= m["specificity"] <= 1
        if m["auroc"] is None:
            continue
        assert 0 <= m["auprc"] <= 1 and 0 <= m["sensitivity"] <= 1
        if m["auroc_ci"] is not None:
            assert m["auroc_ci"][0] <= m["auroc"] <= m["auroc_ci"][1], label
    assert result["per_label"]["Pleural Effusion"]["auroc"] > 0.9  # the synthetic data's easiest finding


def test_sensitivity_rule_reaches_its_target_on_validation(trained):
    youden, sens = trained["youden"], trained["sensitivity"]
    assert sens["rule"] == "sensitivity" and sens["target_sensitivity"] == 0.9
    differing = [label for label in CHEXPERT_LABELS if youden["thresholds"][label] != sens["thresholds"][label]]
    assert len(differing) >= 5, differing
    for label, m in sens["validation"]["per_label"].items():
        if sens["thresholds"][label] is not None:
            assert m["sensitivity"] >= 0.9, (label, m)
    # A target sensitivity of 0.9 trades specificity for sensitivity against Youden's point, on average.
    mean_sens = np.mean([sens["validation"]["per_label"][k]["sensitivity"] for k in CHEXPERT_LABELS])
    assert mean_sens >= np.mean([youden["validation"]["per_label"][k]["sensitivity"] for k in CHEXPERT_LABELS])


def test_slices_cover_sex_age_projection_and_view(trained):
    result = trained["youden"]
    slices = {s["slice"]: s for s in result["slices"]}
    assert SLICES <= slices.keys()
    for s in slices.values():
        assert s["n"] > 0 and s["mean_auroc"] is not None
        assert s["gap"] == pytest.approx(s["mean_auroc"] - result["mean_auroc"], abs=1e-5)
    assert slices["Sex=Female"]["n"] + slices["Sex=Male"]["n"] == result["n"]
    assert slices["Frontal/Lateral=Frontal"]["n"] + slices["Frontal/Lateral=Lateral"]["n"] == result["n"]
    assert slices["AP/PA=AP"]["n"] + slices["AP/PA=PA"]["n"] == slices["Frontal/Lateral=Frontal"]["n"]
    assert sum(slices[f"Age={band}"]["n"] for band in ("<40", "40-59", "60-79", ">=80")) == result["n"]


def test_hard_cases_are_a_chexpert_dataset_of_wrong_answers(trained, tmp_path):
    result = trained["youden"]
    assert result["hard_cases"]["count"] == 12
    local = Path(mlflow.artifacts.download_artifacts(run_id=trained["run"], artifact_path="evaluation/hard_cases",
                                                     dst_path=str(tmp_path), tracking_uri=trained["env"]["MLFLOW_TRACKING_URI"]))
    table = read_chexpert_csv(local / "CheXpert-v1.0-small" / "valid.csv", list(CHEXPERT_LABELS))
    assert len(table) == 12 and list(table.frame.columns[:5]) == list(META_COLUMNS)
    paths = image_paths(table, local)
    assert check_images(paths) == ([], [])
    cases = json.loads((local / "cases.json").read_text())
    scores = [c["score"] for c in cases]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.5
    source = read_chexpert_csv(Path(trained["synth"]) / "CheXpert-v1.0-small" / "valid.csv", list(CHEXPERT_LABELS))
    by_path = dict(zip(source.frame["Path"], source.values))
    for case, path in zip(cases, table.frame["Path"]):
        assert case["path"] == path
        truth = by_path[path][CHEXPERT_LABELS.index(case["label"])]
        threshold = result["thresholds"][case["label"]]
        assert (case["probability"] >= threshold) != (truth == 1.0)  # really wrong at the operating point


def test_missing_run_and_missing_checkpoint(trained):
    env = trained["env"]
    code, out, err = chexops("evaluate", "--run", "0123456789abcdef0123456789abcdef", **env)
    assert code == 2 and "no MLflow run" in err and "Traceback" not in err and out == ""
    client = trained["client"]
    empty = client.create_run(client.get_run(trained["run"]).info.experiment_id).info.run_id
    code, _, err = chexops("evaluate", "--run", empty, **env)
    assert code == 2 and "has no checkpoint artifact" in err and "Traceback" not in err
    code, _, err = chexops("evaluate", "--run", "runs:/", **env)
    assert code == 2


def test_corrupt_checkpoint(trained, tmp_path):
    env, client = trained["env"], trained["client"]
    run_id = client.create_run(client.get_run(trained["run"]).info.experiment_id).info.run_id
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a torch checkpoint")
    client.log_artifact(run_id, str(bad), "checkpoint")
    code, _, err = chexops("evaluate", "--run", run_id, **env)
    assert code == 2 and "not a readable chexops checkpoint" in err and "Traceback" not in err
    torch.save({"weights": 1}, bad)  # readable, but not ours
    client.log_artifact(run_id, str(bad), "checkpoint")
    code, _, err = chexops("evaluate", "--run", run_id, **env)
    assert code == 2 and "not a chexops checkpoint" in err


def test_config_with_other_labels_is_refused(trained, tmp_path):
    config = write_config(tmp_path / "other.yaml", trained["synth"], data={"labels": ["Edema", "Pleural Effusion"]})
    code, _, err = chexops("evaluate", "--run", trained["run"], "--config", str(config), **trained["env"])
    assert code == 2 and "differ from the checkpoint's" in err and "Traceback" not in err


def test_empty_validation_set_is_refused(trained, tmp_path):
    rng = np.random.default_rng(0)
    archive = tmp_path / "empty-val.npz"
    np.savez(archive, train_images=rng.integers(0, 255, (8, 28, 28), dtype=np.uint8), train_labels=np.zeros((8, 14)),
             val_images=np.zeros((0, 28, 28), dtype=np.uint8), val_labels=np.zeros((0, 14)))
    config = write_config(tmp_path / "empty.yaml", trained["synth"], data={"kind": "npz", "npz": str(archive)})
    code, _, err = chexops("evaluate", "--run", trained["run"], "--config", str(config), **trained["env"])
    assert code == 2 and "val split is empty" in err and "Traceback" not in err

    header_only = tmp_path / "valid.csv"
    header_only.write_text(",".join([*META_COLUMNS, *CHEXPERT_LABELS]) + "\n")
    config = write_config(tmp_path / "nohead.yaml", trained["synth"], data={"test_csv": str(header_only)})
    code, _, err = chexops("evaluate", "--run", trained["run"], "--config", str(config), **trained["env"])
    assert code == 2 and "no rows" in err


def test_bad_flags_are_usage_errors(trained):
    code, _, err = chexops("evaluate", "--run", trained["run"], "--threshold-rule", "f1", **trained["env"])
    assert code == 2 and "f1" in err
    code, _, err = chexops("evaluate", "--run", trained["run"], "--threshold-rule", "sensitivity", "--target-sensitivity", "1.5", **trained["env"])
    assert code == 2 and "target-sensitivity" in err


# Pure functions: no model needed.

def test_threshold_rules_on_a_known_example():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    assert choose_threshold(y, p, "youden") == pytest.approx(0.7)  # sens 0.75, spec 1.0
    assert choose_threshold(y, p, "sensitivity", 1.0) == pytest.approx(0.4)  # the highest threshold catching every positive
    assert math.isnan(choose_threshold(np.zeros(5), np.linspace(0, 1, 5), "youden"))


def test_expected_calibration_error():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01  # calibrated by construction
    assert expected_calibration_error(np.array([1, 1, 0, 0]), np.array([0.95, 0.95, 0.05, 0.05])) == pytest.approx(0.05)


def test_parse_run_ref():
    assert parse_run_ref("abc") == ("abc", "checkpoint/model.pt")
    assert parse_run_ref("runs:/abc/checkpoint/model.pt") == ("abc", "checkpoint/model.pt")
    assert parse_run_ref("runs:/abc/checkpoint") == ("abc", "checkpoint/model.pt")
    assert parse_run_ref("runs:/abc") == ("abc", "checkpoint/model.pt")


def test_hard_cases_from_an_npz_dataset_are_pngs_in_chexpert_layout(tmp_path):
    from chexops.data.loading import Split
    from chexops.evaluate import hard_case_scores, slice_metrics, write_hard_cases

    rng = np.random.default_rng(0)
    targets = np.array([[1.0], [0.0], [1.0], [0.0]], dtype=np.float32)
    split = Split("test", targets, np.ones_like(targets), images=rng.integers(0, 255, (4, 28, 28), dtype=np.uint8))
    probs = np.array([[0.1], [0.95], [0.8], [0.2]])
    cases = hard_case_scores(probs, targets, split.mask, ["Pneumonia"], {"Pneumonia": 0.5})
    assert [c["index"] for c in cases] == [1, 0] and cases[0]["error"] == "false positive"
    assert write_hard_cases(tmp_path, split, None, cases, ["Pneumonia"]) == 2
    table = read_chexpert_csv(tmp_path / "CheXpert-v1.0-small" / "valid.csv", ["Pneumonia"])
    assert table.values[:, 0].tolist() == [0.0, 1.0]
    paths = image_paths(table, tmp_path)
    assert all(p.suffix == ".png" for p in paths) and check_images(paths) == ([], [])
    assert slice_metrics(None, probs, targets, split.mask, ["Pneumonia"], ["Pneumonia"], {"Pneumonia": 0.5}, 0.5) == []
