"""Offline evaluation of a training run: `chexops evaluate --run RUN`.

Read top to bottom (`evaluate_run`): load the run's checkpoint and config → predict validation, the
report split and the hold-outs → measure (`chexops.evaluation.metrics`): operating thresholds chosen on
validation, then on the report split (the held-out test split when the config has one, else
validation, which the gate refuses by default) AUROC with a patient-level bootstrap interval, AUPRC,
sensitivity and specificity at the thresholds, calibration, slices, hard cases → write the record
`evaluation/<id>/` (`chexops.evaluation.records`; plots, model card and hard cases:
`chexops.evaluation.report`) → log it to the same MLflow run, with metrics `eval_*`.

The hold-out of every extra training source (`data.sources`, e.g. the clinicians' feedback: its
newest rows, which never train; `chexops.data.sources.holdout_splits`) is reported next to the
report split, under `holdouts.<source>` of metrics.json and as metrics `eval_holdout.<source>.*`:
mean AUROC (over the measurable findings of the mean) and per-finding AUROC with n and positives and
a patient-level bootstrap interval; a finding without both classes there is "not measurable" (no
number). To measure another model (production) on the same hold-out, evaluate it with the
candidate's config (`--config`). The gate reports these numbers but does not judge them: a feedback
hold-out is young and small (tens to hundreds of studies, a few positives per finding), chosen by
what clinicians chose to review, and its images are the service's re-encoded uploads; the gate's
criteria stay on the test split, and people read the hold-out in the evaluation, the model card and
`chexops register`'s record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from chexops.config import Config, load_config
from chexops.core.errors import ConfigError, DataError, UserInputError
from chexops.core.labels import DEFAULT_THRESHOLD, metric_key
from chexops.data.chexpert import DATASET_DIR
from chexops.data.loading import load_splits
from chexops.data.sources import holdout_splits
from chexops.data.splits import Split, Splits, patient_groups
from chexops.evaluation.metrics import (
    RULES,
    bootstrap_auroc,
    choose_thresholds,
    hard_case_scores,
    holdout_metrics,
    mean_of,
    per_label_metrics,
    slice_metrics,
    validation_metrics,
    worst_slice,
)
from chexops.evaluation.records import (
    EVAL_DIR,
    Evaluation,
    EvaluationRecord,
    artifact_path,
    index_entry,
    new_id,
)
from chexops.evaluation.report import fmt, model_card, plot_reliability, plot_roc, write_hard_cases
from chexops.tracking import download, get_run, mlflow_client
from chexops.train.checkpoint import parse_run_ref

log = logging.getLogger(__name__)

# The files of one evaluation record (`evaluation/<id>/...`).
ARTIFACTS = (
    "metrics.json",
    "thresholds.json",
    "config.yaml",
    "roc.png",
    "reliability.png",
    "model_card.md",
    "hard_cases",
)


@dataclass(frozen=True)
class Settings:
    """How to evaluate: the threshold rule, the bootstrap, how many hard cases to keep."""

    rule: str = "youden"
    target_sensitivity: float = 0.9
    n_bootstrap: int = 1000
    hard_cases: int = 32
    seed: int = 0

    def check(self) -> None:
        if self.rule not in RULES:
            raise UserInputError(f"unknown threshold rule {self.rule!r}: use one of {', '.join(RULES)}.")
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise UserInputError(f"--target-sensitivity must be within (0, 1], got {self.target_sensitivity}.")
        if self.n_bootstrap < 0 or self.hard_cases < 0:
            raise UserInputError("--bootstrap and --hard-cases must not be negative.")


def evaluate_run(
    ref: str,
    *,
    config_path: Path | None = None,
    rule: str = "youden",
    target_sensitivity: float = 0.9,
    n_bootstrap: int = 1000,
    hard_cases: int = 32,
    seed: int = 0,
) -> Evaluation:
    """Evaluate a training run and log the evaluation to it as a new record; returns the result."""
    settings = Settings(rule, target_sensitivity, n_bootstrap, hard_cases, seed)
    settings.check()
    started = time.monotonic()
    client = mlflow_client()
    with tempfile.TemporaryDirectory(prefix="chexops-eval-") as tmp:
        work = Path(tmp)
        loaded = load_run(client, ref, config_path, work)
        splits = load_splits(loaded.config)
        predictions = predict_splits(loaded, splits)
        measured = measure(predictions, loaded.labels, loaded.config.eval.mean_labels(loaded.labels), settings)
        record = make_record(loaded, splits.fingerprint, predictions, measured, settings)
        out = work / EVAL_DIR / record.evaluation_id
        write_record(out, record, loaded, splits.fingerprint, predictions, measured)
        log_record(client, record, out)
    eval_id = record.evaluation_id
    result = Evaluation(
        **record.model_dump(),
        artifacts=[artifact_path(eval_id, name) for name in ARTIFACTS],
        artifact_uri=f"runs:/{record.run_id}/{artifact_path(eval_id)}",
        tracking_uri=client.tracking_uri,
        seconds=round(time.monotonic() - started, 1),
    )
    log.info(
        "Run %s: %s mean AUROC %s (rule %s), worst slice %s, %d hard cases, %.0f s",
        result.run_id,
        result.split,
        fmt(result.mean_auroc),
        rule,
        result.worst_slice["slice"] if result.worst_slice else "n/a",
        result.hard_cases.count,
        result.seconds,
    )
    return result


# --------------------------------------------------------------------------------------------
# Load: reference, checkpoint, config, model.
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedRun:
    run_id: str
    run: Any
    payload: dict[str, Any]
    config: Config
    labels: list[str]
    model: Any


def load_run(client, ref: str, config_path: Path | None, workdir: Path) -> LoadedRun:
    """The run's checkpoint as a model in eval mode, and the config to rebuild its data with."""
    from chexops.config import ModelConfig
    from chexops.imaging.preprocessing import PreprocessSpec
    from chexops.train.checkpoint import load_checkpoint
    from chexops.train.models import build_model

    run_id, artifact = parse_run_ref(ref)
    run = get_run(client, run_id)
    local = download(client, run_id, artifact, workdir / "checkpoint")
    if local is None or not local.is_file():
        raise UserInputError(f"run {run_id} has no checkpoint artifact {artifact!r} (did its training finish?).")
    payload = load_checkpoint(local)
    for key in ("model", "model_config", "labels", "preprocessing"):
        if key not in payload:
            raise UserInputError(
                f"checkpoint {artifact} of run {run_id} lacks {key!r}; it is not a complete chexops checkpoint."
            )

    if config_path is not None:
        config = load_config(config_path)
    else:
        saved = download(client, run_id, "config.yaml", workdir / "config")
        if saved is not None:
            config = load_config(saved)
        elif "config" in payload:
            try:
                config = Config.model_validate(payload["config"])
            except Exception as exc:  # noqa: BLE001 - an old or edited payload
                raise ConfigError(f"the config inside the checkpoint of run {run_id} is not valid: {exc}") from None
        else:
            raise UserInputError(f"run {run_id} has no config.yaml; pass --config.")

    labels = list(payload["labels"])
    if list(config.data.labels) != labels:
        raise UserInputError(
            f"the config's labels ({', '.join(config.data.labels)}) differ from the checkpoint's "
            f"({', '.join(labels)}); "
            "evaluate with the config the model was trained with."
        )
    try:
        spec = PreprocessSpec.from_dict(payload["preprocessing"])
        model_cfg = ModelConfig.model_validate({**payload["model_config"], "pretrained_weights": None})
        model = build_model(model_cfg, len(labels), spec)
        model.load_state_dict(payload["model"])
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise UserInputError(
            f"checkpoint {artifact} of run {run_id} does not rebuild its model: {str(exc).splitlines()[0]}"
        ) from None
    if config.preprocess.spec() != spec:
        log.warning(
            "The config's preprocessing differs from the checkpoint's; evaluating with the checkpoint's (what training "
            "used)."
        )
    model.eval()
    return LoadedRun(run_id, run, payload, config, labels, model)


# --------------------------------------------------------------------------------------------
# Predict: validation (the thresholds), the report split (the metrics), the sources' hold-outs.
# --------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """The model's probabilities on every split the evaluation reads."""

    val: Split
    val_probs: np.ndarray
    report: Split  # test when the config has one, else validation
    report_name: str
    probs: np.ndarray
    source_csv: Path | None  # the CSV the report split's rows come from (hard cases copy them)
    holdouts: dict[str, tuple[Split, np.ndarray]]


def predict_splits(loaded: LoadedRun, splits: Splits) -> Predictions:
    import torch

    from chexops.imaging.preprocessing import PreprocessSpec
    from chexops.train.dataset import RadiographDataset
    from chexops.train.loop import predict

    spec = PreprocessSpec.from_dict(loaded.payload["preprocessing"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = loaded.model.to(device)

    def probabilities(split: Split) -> np.ndarray:
        return predict(model, RadiographDataset(split, spec, cache=True, progress=False), 128, device, amp=False)

    config, val = loaded.config, splits.val
    val_probs = probabilities(val)
    if splits.test is not None:
        source = config.data.test_csv or config.data.csv  # a carved test split's rows are csv's
        report, name, probs = splits.test, "test", probabilities(splits.test)
        source_csv = Path(source) if source else None
    else:
        report, name, probs = val, "validation", val_probs
        source_csv = Path(config.data.csv) if config.data.csv else None
    holdouts = {source: (split, probabilities(split)) for source, split in holdout_splits(config).items()}
    return Predictions(val, val_probs, report, name, probs, source_csv, holdouts)


# --------------------------------------------------------------------------------------------
# Measure: thresholds on validation, then the report split, its slices and hard cases, the hold-outs.
# --------------------------------------------------------------------------------------------


@dataclass
class Measurements:
    """The numbers, before rounding: NaN where a metric has no value."""

    thresholds: dict[str, float]
    defaulted: list[str]  # labels with one class in validation: the default threshold
    validation: dict[str, dict[str, Any]]
    per_label: dict[str, dict[str, Any]]  # with each label's bootstrap interval, `auroc_ci`
    mean_over: list[str]
    mean_auroc: float
    mean_auroc_ci: tuple[float, float] | None
    groups: np.ndarray | None  # each report row's patient (the bootstrap's unit); None: images
    slices: list[dict[str, Any]]
    cases: list[dict[str, Any]]
    holdouts: dict[str, dict[str, Any]]


def measure(p: Predictions, labels: list[str], mean_over: list[str], settings: Settings) -> Measurements:
    thresholds, defaulted = choose_thresholds(p.val, p.val_probs, labels, settings.rule, settings.target_sensitivity)
    if len(defaulted) == len(labels):
        raise DataError(
            f"the validation split ({len(p.val)} images) has no label with both positive and negative "
            "examples, so no operating threshold can be chosen."
        )
    if defaulted:  # a service needs a number for every label: the default, said out loud
        log.warning(
            "No threshold can be chosen for %s (one class only in validation); using %s.",
            ", ".join(defaulted),
            DEFAULT_THRESHOLD,
        )
    t, m = p.report.targets, p.report.mask
    per_label = per_label_metrics(p.probs, t, m, labels, thresholds)
    groups = patient_groups(p.report)
    cis, mean_ci = bootstrap_auroc(p.probs, t, m, labels, mean_over, settings.n_bootstrap, settings.seed, groups)
    for label in labels:
        per_label[label]["auroc_ci"] = cis[label]
    overall = mean_of(per_label, mean_over)
    return Measurements(
        thresholds=thresholds,
        defaulted=defaulted,
        validation=validation_metrics(p.val, p.val_probs, labels, thresholds),
        per_label=per_label,
        mean_over=mean_over,
        mean_auroc=overall,
        mean_auroc_ci=mean_ci,
        groups=groups,
        slices=slice_metrics(p.report.frame, p.probs, t, m, labels, mean_over, thresholds, overall),
        cases=hard_case_scores(p.probs, t, m, labels, thresholds)[: settings.hard_cases],
        holdouts={
            name: holdout_metrics(split, probs, labels, mean_over, settings.n_bootstrap, settings.seed)
            for name, (split, probs) in p.holdouts.items()
        },
    )


def make_record(
    loaded: LoadedRun, fingerprint: dict[str, Any], p: Predictions, m: Measurements, settings: Settings
) -> EvaluationRecord:
    """The record (metrics.json): the measurements with what they were measured on, JSON-safe."""
    evaluation_id = new_id()
    hashed = {
        "config": loaded.config.to_dict(),
        "rule": settings.rule,
        "target_sensitivity": settings.target_sensitivity,
        "bootstrap": settings.n_bootstrap,
        "seed": settings.seed,
    }
    record = EvaluationRecord.model_validate(
        _clean(
            {
                "run_id": loaded.run_id,
                "evaluation_id": evaluation_id,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "split": p.report_name,
                "n": len(p.report),
                "validation_n": len(p.val),
                "split_version": fingerprint["split_versions"][p.report.name],
                "test_source": fingerprint.get("test_source"),
                "test_patients_in_train": fingerprint.get("test_patients_in_train", 0),
                "config_sha256": hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest(),
                "data_version": fingerprint["data_version"],
                "data_sha256": fingerprint["sha256"],
                "trained_data_version": loaded.run.data.tags.get("data_version"),
                "mean_over": m.mean_over,
                "mean_auroc": m.mean_auroc,
                "mean_auroc_ci": m.mean_auroc_ci,
                "mean_ece": mean_of(m.per_label, m.mean_over, "ece"),
                "rule": settings.rule,
                "target_sensitivity": settings.target_sensitivity if settings.rule == "sensitivity" else None,
                "thresholds": m.thresholds,
                "thresholds_defaulted": m.defaulted,
                "bootstrap": settings.n_bootstrap,
                "bootstrap_unit": "patient" if m.groups is not None else "image",
                "bootstrap_groups": int(len(np.unique(m.groups))) if m.groups is not None else len(p.report),
                "per_label": m.per_label,
                "validation": {"mean_auroc": mean_of(m.validation, m.mean_over), "per_label": m.validation},
                "slices": m.slices,
                "worst_slice": worst_slice(m.slices),
                "holdouts": m.holdouts,
                "hard_cases": {
                    "count": len(m.cases),
                    "artifact_path": artifact_path(evaluation_id, "hard_cases"),
                    "csv": artifact_path(evaluation_id, f"hard_cases/{DATASET_DIR}/valid.csv"),
                },
            }
        )
    )
    if record.data_version != record.trained_data_version:
        log.warning(
            "Evaluating on data version %s; the model was trained on %s.",
            record.data_version,
            record.trained_data_version,
        )
    return record


def _clean(value: Any) -> Any:
    """JSON-safe: NaN → None, floats rounded, tuples → lists."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


# --------------------------------------------------------------------------------------------
# Write the record's files; log them, its metrics and its index entry to the run.
# --------------------------------------------------------------------------------------------


def write_record(
    out: Path, record: EvaluationRecord, loaded: LoadedRun, fingerprint: dict[str, Any], p: Predictions, m: Measurements
) -> None:
    """This evaluation's own folder `out`, next to (never over) earlier ones: the files of `ARTIFACTS`."""
    out.mkdir(parents=True)
    labels, t, mask = loaded.labels, p.report.targets, p.report.mask
    write_hard_cases(out / "hard_cases", p.report, p.source_csv, m.cases, labels)
    title = f"ROC on {p.report_name} (mean AUROC {fmt(m.mean_auroc)})"
    plot_roc(out / "roc.png", p.probs, t, mask, labels, m.per_label, title)
    plot_reliability(out / "reliability.png", p.probs, t, mask, labels, m.per_label)
    thresholds = {
        "rule": record.rule,
        "target_sensitivity": record.target_sensitivity,
        "thresholds": record.thresholds,
        "labels": labels,
        "chosen_on": "validation",
        "defaulted": m.defaulted,
    }
    (out / "thresholds.json").write_text(json.dumps(thresholds, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(record.model_dump(mode="json"), indent=2) + "\n")
    card = model_card(record, loaded.config, loaded.payload, loaded.run.data.tags, fingerprint)
    (out / "model_card.md").write_text(card)
    (out / "config.yaml").write_text(yaml.safe_dump(loaded.config.to_dict(), sort_keys=False))


def log_record(client, record: EvaluationRecord, out: Path) -> None:
    """The record's files, its `eval_*` metrics and its index entry, on the training run."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = record_metrics(record)
    client.log_batch(record.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None])
    client.log_artifacts(record.run_id, str(out), artifact_path(record.evaluation_id))
    client.set_tag(record.run_id, *index_entry(record.model_dump(mode="json")))
    client.set_tag(record.run_id, "evaluated", "true")
    client.set_tag(record.run_id, "eval_rule", record.rule)


def record_metrics(record: EvaluationRecord) -> dict[str, float | None]:
    """The MLflow metrics of a record: `eval_mean_auroc`, ..., `eval_<metric>.<finding>`, the hold-outs'."""
    metrics = {
        "eval_mean_auroc": record.mean_auroc,
        "eval_mean_ece": record.mean_ece,
        "eval_validation_mean_auroc": record.validation.mean_auroc,
        "eval_hard_cases": float(record.hard_cases.count),
    }
    if record.worst_slice:
        metrics["eval_worst_slice_gap"] = record.worst_slice["gap"]
    if record.mean_auroc_ci:
        metrics["eval_mean_auroc_ci_low"], metrics["eval_mean_auroc_ci_high"] = record.mean_auroc_ci
    for label, v in record.per_label.items():
        key = metric_key(label)
        for name in ("auroc", "auprc", "sensitivity", "specificity", "ece", "threshold"):
            metrics[f"eval_{name}.{key}"] = v[name]
    metrics.update(holdout_metric_values(record.holdouts))
    return metrics


def holdout_metric_values(holdouts: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The MLflow metrics of the sources' hold-outs: `eval_holdout.<source>.mean_auroc`, `...n` and
    `eval_holdout.<source>.auroc.<finding>` (measurable findings only: no number where no AUROC exists)."""
    metrics: dict[str, float | None] = {}
    for name, h in holdouts.items():
        metrics[f"eval_holdout.{name}.mean_auroc"] = h["mean_auroc"]
        metrics[f"eval_holdout.{name}.n"] = float(h["n"])
        for label, v in h["per_label"].items():
            if v["measurable"]:
                metrics[f"eval_holdout.{name}.auroc.{metric_key(label)}"] = v["auroc"]
    return metrics
