"""`chexops evaluate`: metrics, thresholds, calibration, slices, hard cases, plots and card, logged to
the training run; and the bad inputs that must end in a clear message and exit code 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from chexops.core.labels import CHEXPERT_LABELS, META_COLUMNS
from chexops.data.chexpert import check_images, image_paths, read_chexpert_csv
from chexops.evaluation.metrics import bootstrap_auroc, choose_threshold, expected_calibration_error, label_metrics
from chexops.evaluation.records import Evaluation, index
from chexops.evaluation.report import format_result
from chexops.evaluation.run import load_run
from chexops.imaging.preprocessing import PreprocessSpec, load_image, preprocess
from chexops.train.checkpoint import parse_run_ref
from mlflow_fixtures import synth_dataset, train_run, write_config
from support import chexops, chexops_json

SLICES = {
    "Sex=Female",
    "Sex=Male",
    "Age=<40",
    "Age=40-59",
    "Age=60-79",
    "Age=>=80",
    "AP/PA=AP",
    "AP/PA=PA",
    "Frontal/Lateral=Frontal",
    "Frontal/Lateral=Lateral",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny model trained on all views (laterals included), evaluated by both threshold rules
    (sensitivity first, so that the run ends up holding the Youden evaluation)."""
    home = tmp_path_factory.mktemp("eval-home")
    env = {"CHEXOPS_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    synth = synth_dataset(tmp_path_factory)
    config = write_config(home / "tiny.yaml", synth)
    summary = train_run(config, **env)
    run = summary.run_id
    sensitivity = chexops_json(
        "evaluate",
        "--run",
        run,
        "--threshold-rule",
        "sensitivity",
        "--target-sensitivity",
        "0.9",
        "--bootstrap",
        "20",
        **env,
    )
    youden = chexops_json(
        "evaluate", "--run", f"runs:/{run}/checkpoint/model.pt", "--bootstrap", "200", "--hard-cases", "12", **env
    )
    return {
        "home": home,
        "env": env,
        "config": config,
        "synth": synth,
        "summary": summary,
        "run": run,
        "youden": youden,
        "sensitivity": sensitivity,
        "client": MlflowClient(env["MLFLOW_TRACKING_URI"]),
    }


def _record(trained, result, tmp_path) -> Path:
    """The local copy of one evaluation record (`evaluation/<id>/`)."""
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=trained["run"],
            artifact_path=f"evaluation/{result['evaluation_id']}",
            dst_path=str(tmp_path),
            tracking_uri=trained["env"]["MLFLOW_TRACKING_URI"],
        )
    )


@pytest.mark.slow
def test_evaluation_is_logged_to_the_training_run(trained, tmp_path):
    client, run_id, result = trained["client"], trained["run"], trained["youden"]
    run = client.get_run(run_id)
    assert run.data.tags["evaluated"] == "true"
    metrics = run.data.metrics
    assert metrics["eval_mean_auroc"] == pytest.approx(result["mean_auroc"], abs=1e-6)
    for label in ("Atelectasis", "Cardiomegaly", "Pleural_Effusion", "No_Finding"):
        for name in ("auroc", "auprc", "sensitivity", "specificity", "ece", "threshold"):
            assert f"eval_{name}.{label}" in metrics
    record = f"evaluation/{result['evaluation_id']}"
    names = {a.path for a in client.list_artifacts(run_id, record)}
    assert {
        f"{record}/{n}"
        for n in (
            "metrics.json",
            "thresholds.json",
            "config.yaml",
            "roc.png",
            "reliability.png",
            "model_card.md",
            "hard_cases",
        )
    } <= names

    local = _record(trained, result, tmp_path)
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
    assert run_id in card and "Frontal/Lateral=Lateral" in card and "synthetic" in card and "patients" in card


@pytest.mark.slow
def test_a_second_evaluation_keeps_the_first(trained, tmp_path):
    """Two evaluations of one run are two records: the second (Youden) leaves the first (sensitivity)
    as it was, and the index (run tags) lists both with their split, data and config hash."""
    sens, youden = trained["sensitivity"], trained["youden"]
    assert sens["evaluation_id"] != youden["evaluation_id"] and sens["evaluation_id"] < youden["evaluation_id"]
    first = _record(trained, sens, tmp_path / "first")
    kept = json.loads((first / "thresholds.json").read_text())
    assert kept["rule"] == "sensitivity" and kept["thresholds"] == sens["thresholds"] != youden["thresholds"]
    assert json.loads((first / "metrics.json").read_text())["bootstrap"] == 20
    entries = index(trained["client"].get_run(trained["run"]))
    assert [e["id"] for e in entries] == [sens["evaluation_id"], youden["evaluation_id"]]
    assert {e["rule"] for e in entries} == {"sensitivity", "youden"}
    assert entries[0]["config_sha256"] != entries[1]["config_sha256"]
    assert (
        entries[0]["split"] == entries[1]["split"] == "test"
        and entries[0]["split_version"] == entries[1]["split_version"]
    )
    assert entries[0]["data_version"] == youden["data_version"]


@pytest.mark.slow
def test_metrics_agree_with_sklearn_on_the_models_own_predictions(trained, tmp_path):
    """What the fixture guarantees: the evaluation's AUROCs are scikit-learn's on this model's
    predictions for valid.csv (read here with pandas: uncertain ignored, blank negative), and the
    same model on the same test split reproduces training's own test AUROC."""
    result, summary = trained["youden"], trained["summary"]
    assert result["run_id"] == trained["run"] and result["split"] == "test" and result["test_source"] == "test_csv"
    assert result["mean_auroc"] == pytest.approx(summary.test.mean_auroc, abs=1e-5)

    loaded = load_run(trained["client"], trained["run"], None, tmp_path)
    spec = PreprocessSpec.from_dict(loaded.payload["preprocessing"])
    frame = pd.read_csv(Path(trained["synth"]) / "CheXpert-v1.0-small" / "valid.csv")
    batch = np.stack([preprocess(load_image(Path(trained["synth"]) / p), spec) for p in frame["Path"]])
    with torch.no_grad():
        probs = torch.sigmoid(loaded.model(torch.from_numpy(batch))).numpy()
    expected = {}
    for j, label in enumerate(CHEXPERT_LABELS):
        raw = frame[label].to_numpy(dtype=float)
        keep = raw != -1.0
        y = np.nan_to_num(raw[keep], nan=0.0)
        assert result["per_label"][label]["n"] == keep.sum() and result["per_label"][label]["positives"] == y.sum()
        if 0 < y.sum() < len(y):
            expected[label] = roc_auc_score(y, probs[keep, j])
            assert result["per_label"][label]["auroc"] == pytest.approx(expected[label], abs=1e-5), label
        else:
            assert result["per_label"][label]["auroc"] is None, label
    assert result["mean_auroc"] == pytest.approx(np.mean([expected[k] for k in result["mean_over"]]), abs=1e-5)
    # The interval comes from resampling patients (valid.csv: one study per patient, laterals too).
    assert (
        result["bootstrap_unit"] == "patient"
        and result["bootstrap_groups"] == frame["Path"].str.extract(r"(patient\d+)")[0].nunique()
    )
    lo, hi = result["mean_auroc_ci"]
    assert lo < result["mean_auroc"] < hi


@pytest.mark.slow
def test_the_feedback_hold_out_is_reported_next_to_the_test_split(trained, tmp_path):
    """With a training source (`data.sources`), the evaluation reports the model on its hold-out (the
    newest rows): per finding scikit-learn's AUROC on this model's predictions with n and positives,
    a finding with one class there as not measurable (no number, no metric), in metrics.json, MLflow
    metrics, the model card and the human summary."""
    data = Path(trained["synth"]) / "CheXpert-v1.0-small"
    frame = pd.read_csv(data / "valid.csv", dtype=str, keep_default_na=False)
    frame.loc[len(frame) - round(len(frame) * 0.3) :, "Edema"] = "0.0"  # one class in the hold-out: no AUROC exists
    hold = frame.iloc[len(frame) - round(len(frame) * 0.3) :]
    (tmp_path / "fb").mkdir()
    frame.to_csv(tmp_path / "fb" / "train.csv", index=False)
    source = {
        "name": "fb",
        "csv": str(tmp_path / "fb" / "train.csv"),
        "root": str(trained["synth"]),
        "holdout_fraction": 0.3,
    }
    config = write_config(tmp_path / "sources.yaml", Path(trained["synth"]), data={"sources": [source]})
    result = chexops_json(
        "evaluate", "--run", trained["run"], "--config", str(config), "--bootstrap", "50", **trained["env"]
    )
    summary = format_result(Evaluation.model_validate(result))  # what `chexops evaluate` prints without --json
    assert "hold-out of source fb" in summary and "not measurable" in summary
    assert result["split"] == "test" and result["mean_auroc"] == pytest.approx(
        trained["youden"]["mean_auroc"], abs=1e-6
    )
    h = result["holdouts"]["fb"]
    assert h["n"] == len(hold) and h["not_measurable"] == ["Edema"] and "Edema" not in h["mean_over"]

    loaded = load_run(trained["client"], trained["run"], None, tmp_path)
    spec = PreprocessSpec.from_dict(loaded.payload["preprocessing"])
    batch = np.stack([preprocess(load_image(Path(trained["synth"]) / p), spec) for p in hold["Path"]])
    with torch.no_grad():
        probs = torch.sigmoid(loaded.model(torch.from_numpy(batch))).numpy()
    metrics = trained["client"].get_run(trained["run"]).data.metrics
    for j, label in enumerate(CHEXPERT_LABELS):
        y = hold[label].replace("", "0.0").to_numpy(dtype=float)
        keep = y != -1.0
        m = h["per_label"][label]
        assert (m["n"], m["positives"]) == (keep.sum(), y[keep].sum()), label
        key = f"eval_holdout.fb.auroc.{label.replace(' ', '_')}"
        if label == "Edema":
            assert m["measurable"] is False and m["auroc"] is None and key not in metrics
        else:
            assert m["measurable"] and m["auroc"] == pytest.approx(roc_auc_score(y[keep], probs[keep, j]), abs=1e-5), (
                label
            )
            assert metrics[key] == pytest.approx(m["auroc"], abs=1e-6)
            lo, hi = m["auroc_ci"]
            assert lo <= m["auroc"] <= hi
    assert h["mean_auroc"] == pytest.approx(np.mean([h["per_label"][k]["auroc"] for k in h["mean_over"]]), abs=1e-6)
    assert metrics["eval_holdout.fb.mean_auroc"] == pytest.approx(h["mean_auroc"], abs=1e-6)
    card = (_record(trained, result, tmp_path / "rec") / "model_card.md").read_text()
    assert "## Hold-out of source `fb`" in card and "| Edema |" in card and "not measurable" in card
    assert "holdouts" in trained["youden"] and trained["youden"]["holdouts"] == {}  # no source, no hold-out


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_hard_cases_are_a_chexpert_dataset_of_wrong_answers(trained, tmp_path):
    result = trained["youden"]
    assert result["hard_cases"]["count"] == 12
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=trained["run"],
            artifact_path=result["hard_cases"]["artifact_path"],
            dst_path=str(tmp_path),
            tracking_uri=trained["env"]["MLFLOW_TRACKING_URI"],
        )
    )
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_config_with_other_labels_is_refused(trained, tmp_path):
    config = write_config(tmp_path / "other.yaml", trained["synth"], data={"labels": ["Edema", "Pleural Effusion"]})
    code, _, err = chexops("evaluate", "--run", trained["run"], "--config", str(config), **trained["env"])
    assert code == 2 and "differ from the checkpoint's" in err and "Traceback" not in err


@pytest.mark.slow
def test_empty_validation_set_is_refused(trained, tmp_path):
    rng = np.random.default_rng(0)
    archive = tmp_path / "empty-val.npz"
    np.savez(
        archive,
        train_images=rng.integers(0, 255, (8, 28, 28), dtype=np.uint8),
        train_labels=np.zeros((8, 14)),
        val_images=np.zeros((0, 28, 28), dtype=np.uint8),
        val_labels=np.zeros((0, 14)),
    )
    config = write_config(tmp_path / "empty.yaml", trained["synth"], data={"kind": "npz", "npz": str(archive)})
    code, _, err = chexops("evaluate", "--run", trained["run"], "--config", str(config), **trained["env"])
    assert code == 2 and "val split is empty" in err and "Traceback" not in err

    header_only = tmp_path / "valid.csv"
    header_only.write_text(",".join([*META_COLUMNS, *CHEXPERT_LABELS]) + "\n")
    config = write_config(tmp_path / "nohead.yaml", trained["synth"], data={"test_csv": str(header_only)})
    code, _, err = chexops("evaluate", "--run", trained["run"], "--config", str(config), **trained["env"])
    assert code == 2 and "no rows" in err


@pytest.mark.slow
def test_bad_flags_are_usage_errors(trained):
    code, _, err = chexops("evaluate", "--run", trained["run"], "--threshold-rule", "f1", **trained["env"])
    assert code == 2 and "f1" in err
    code, _, err = chexops(
        "evaluate",
        "--run",
        trained["run"],
        "--threshold-rule",
        "sensitivity",
        "--target-sensitivity",
        "1.5",
        **trained["env"],
    )
    assert code == 2 and "target-sensitivity" in err


# Pure functions: no model needed.


def test_threshold_rules_on_a_known_example():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    assert choose_threshold(y, p, "youden") == pytest.approx(0.7)  # sens 0.75, spec 1.0
    assert choose_threshold(y, p, "sensitivity", 1.0) == pytest.approx(
        0.4
    )  # the highest threshold catching every positive
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
    from chexops.data.splits import Split
    from chexops.evaluation.metrics import hard_case_scores, slice_metrics
    from chexops.evaluation.report import write_hard_cases

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


def test_auroc_on_a_known_example():
    # Positives at 0.35 and 0.8, negatives at 0.1 and 0.4: 3 of the 4 pairs ordered right.
    m = label_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), 0.5)
    assert m["auroc"] == 0.75 and (m["n"], m["positives"]) == (4, 2)
    assert (m["sensitivity"], m["specificity"]) == (0.5, 1.0)


def test_bootstrap_resamples_patients_not_images():
    """40 patients with 10 identical images each: resampling images pretends there are 400
    independent cases and gives an interval about sqrt(10) times too narrow; resampling patients
    gives the interval of 40 cases."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(40) % 2, 10).astype(float)[:, None]
    p = np.repeat(np.clip(0.5 + 0.25 * (np.arange(40) % 2 - 0.5) + rng.normal(0, 0.25, 40), 0, 1), 10)[:, None]
    mask = np.ones_like(y)
    patients = np.repeat(np.arange(40), 10)
    _, by_patient = bootstrap_auroc(p, y, mask, ["Edema"], ["Edema"], 400, seed=0, groups=patients)
    _, by_image = bootstrap_auroc(p, y, mask, ["Edema"], ["Edema"], 400, seed=0)
    width_patient, width_image = by_patient[1] - by_patient[0], by_image[1] - by_image[0]
    assert width_patient > 2 * width_image, (by_patient, by_image)
    # With one image per patient, patients and images are the same unit: the same interval.
    single = np.arange(len(y))
    assert (
        bootstrap_auroc(p, y, mask, ["Edema"], ["Edema"], 100, seed=3, groups=single)[1]
        == bootstrap_auroc(p, y, mask, ["Edema"], ["Edema"], 100, seed=3)[1]
    )


@pytest.mark.slow
def test_a_test_split_carved_by_patient_is_held_out_and_versioned(tmp_path_factory, tmp_path):
    """Without data.test_csv, data.test_fraction carves a test split out of data.csv by patient:
    no patient on two sides, the carve recorded in the fingerprint and the data version, and the
    test split the same whatever the training seed (so models trained with other seeds compare)."""
    from chexops.config import load_config
    from chexops.core.errors import ConfigError
    from chexops.data.loading import load_splits

    synth = synth_dataset(tmp_path_factory)
    carved = write_config(tmp_path / "carved.yaml", synth, data={"test_csv": None, "test_fraction": 0.2})
    splits = load_splits(load_config(carved))
    patients = {s.name: set(s.frame["patient"]) for s in (splits.train, splits.val, splits.test)}
    assert (
        patients["test"]
        and not patients["test"] & (patients["train"] | patients["val"])
        and not patients["train"] & patients["val"]
    )
    assert len(patients["test"]) == round(0.2 * sum(map(len, patients.values())))
    fingerprint = splits.fingerprint
    assert "fraction 0.2" in fingerprint["test_source"] and fingerprint["rows"]["test"] == len(splits.test)
    other_seed = load_splits(load_config(carved, ["seed=7"]))
    assert set(other_seed.test.frame["patient"]) == patients["test"]
    assert other_seed.fingerprint["split_versions"]["test"] == fingerprint["split_versions"]["test"]
    assert other_seed.fingerprint["split_versions"]["val"] != fingerprint["split_versions"]["val"]
    wider = load_splits(load_config(carved, ["data.test_fraction=0.3"])).fingerprint
    assert (
        wider["data_version"] != fingerprint["data_version"]
        and wider["split_versions"]["test"] != fingerprint["split_versions"]["test"]
    )
    with pytest.raises(ConfigError, match="test_fraction"):
        load_config(write_config(tmp_path / "both.yaml", synth, data={"test_fraction": 0.2}))
