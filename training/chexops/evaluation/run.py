"""Offline evaluation of a training run: `chexops evaluate --run RUN`.

Read top to bottom: the run's checkpoint and config → predictions on validation (and test) →
operating thresholds chosen on validation → metrics on the report split (the held-out test split
when the config has one, else validation, which the gate refuses by default): AUROC with a
patient-level bootstrap interval, AUPRC, sensitivity and specificity at the thresholds,
calibration → slices → hard cases → plots and a model card → everything logged to the same MLflow
run as a new record `evaluation/<id>/` (`chexops.evaluation.records`), with metrics `eval_*`.

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

Every metric comes from scikit-learn; only the expected calibration error is assembled here, from
`sklearn.calibration.calibration_curve`'s bins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
import yaml
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, recall_score, roc_auc_score, roc_curve

from chexops.config import Config, load_config
from chexops.data.chexpert import DATASET_DIR
from chexops.data.loading import load_splits
from chexops.data.splits import Split, patient_groups, split_version
from chexops.data.sources import holdout_splits
from chexops.core.errors import ConfigError, DataError, UserInputError
from chexops.evaluation.records import EVAL_DIR, artifact_path, index_entry, new_id
from chexops.core.labels import DEFAULT_THRESHOLD, META_COLUMNS, metric_key
from chexops.train.checkpoint import parse_run_ref
from chexops.tracking import download, get_run, mlflow_client

log = logging.getLogger(__name__)

RULES = ("youden", "sensitivity")
# The files of one evaluation record (`evaluation/<id>/...`).
ARTIFACTS = ("metrics.json", "thresholds.json", "config.yaml", "roc.png", "reliability.png", "model_card.md", "hard_cases")
ECE_BINS = 10
# Age bands of the slices: [low, high) in years.
AGE_BANDS: tuple[tuple[str, float, float], ...] = (("<40", 0, 40), ("40-59", 40, 60), ("60-79", 60, 80), (">=80", 80, 200))


# --------------------------------------------------------------------------------------------
# Metrics: pure functions of (targets, probabilities), scikit-learn underneath.
# --------------------------------------------------------------------------------------------


def _both_classes(y: np.ndarray) -> bool:
    return len(y) > 0 and 0 < int(y.sum()) < len(y)


def choose_threshold(y: np.ndarray, p: np.ndarray, rule: str, target_sensitivity: float = 0.9) -> float:
    """The operating threshold of one label (predict positive when p >= threshold), on validation data.

    `youden`: the ROC point that maximises sensitivity + specificity - 1.
    `sensitivity`: the highest threshold whose sensitivity reaches `target_sensitivity`.
    NaN when the data has a single class (no threshold can be chosen).
    """
    if rule not in RULES:
        raise UserInputError(f"unknown threshold rule {rule!r}: use one of {', '.join(RULES)}.")
    if not _both_classes(y):
        return math.nan
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    if rule == "youden":
        idx = int(np.argmax(tpr - fpr))
    else:
        idx = int(np.flatnonzero(tpr >= target_sensitivity - 1e-12)[0])
    # roc_curve's first threshold is +inf (nothing predicted positive); keep thresholds in [0, 1].
    return float(min(thr[idx], 1.0))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |observed frequency - mean predicted probability| over the
    equal-width bins of `calibration_curve` (whose empty bins it drops, as here)."""
    if len(y) == 0:
        return math.nan
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    bins = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(bins[1:-1], p), minlength=n_bins)
    counts = counts[counts > 0]
    return float(np.sum(counts / counts.sum() * np.abs(prob_true - prob_pred)))


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity and specificity of `p >= threshold`."""
    if math.isnan(threshold) or len(y) == 0:
        return {"sensitivity": math.nan, "specificity": math.nan}
    pred = (p >= threshold).astype(int)
    y = y.astype(int)
    sens = recall_score(y, pred, pos_label=1, zero_division=np.nan) if y.any() else math.nan
    spec = recall_score(y, pred, pos_label=0, zero_division=np.nan) if (1 - y).any() else math.nan
    return {"sensitivity": float(sens), "specificity": float(spec)}


def label_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUROC, AUPRC, Brier, ECE and sensitivity / specificity at the threshold of one label."""
    both = _both_classes(y)
    out: dict[str, Any] = {
        "n": int(len(y)), "positives": int(y.sum()),
        "auroc": float(roc_auc_score(y, p)) if both else math.nan,
        "auprc": float(average_precision_score(y, p)) if both else math.nan,
        "brier": float(brier_score_loss(y, p, labels=[0, 1])) if len(y) else math.nan,
        "ece": expected_calibration_error(y, p),
        "threshold": threshold,
    }
    out.update(at_threshold(y, p, threshold))
    return out


def resample_rows(rng: np.random.Generator, members: list[np.ndarray]) -> np.ndarray:
    """The rows of one bootstrap resample: as many groups (patients) as there are, drawn with
    replacement, each bringing all its rows."""
    return np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])


def _bootstrap_chunk(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, members: list[np.ndarray], n_boot: int,
                     seed: np.random.SeedSequence) -> np.ndarray:
    """AUROC of every label on `n_boot` resamples of the groups (NaN where a resample has one class)."""
    rng = np.random.default_rng(seed)
    n_labels = targets.shape[1]
    values = np.full((n_boot, n_labels), np.nan)
    # Labels without masked rows are scored in one multilabel call per resample (much less
    # per-call overhead); the others, and any resample where a label has one class, one by one.
    full = [j for j in range(n_labels) if (mask[:, j] > 0).all()]
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for b in range(n_boot):
            idx = resample_rows(rng, members)
            todo = list(range(n_labels))
            if full:
                y = targets[np.ix_(idx, full)]
                if all(_both_classes(y[:, k]) for k in range(len(full))):
                    values[b, full] = roc_auc_score(y, probs[np.ix_(idx, full)], average=None)
                    todo = [j for j in todo if j not in full]
            for j in todo:
                keep = mask[idx, j] > 0
                y = targets[idx, j][keep]
                if _both_classes(y):
                    values[b, j] = roc_auc_score(y, probs[idx, j][keep])
    return values


BOOTSTRAP_CHUNKS = 8


def bootstrap_auroc(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str], mean_over: list[str],
                    n_boot: int, seed: int = 0, groups: np.ndarray | None = None,
                    ) -> tuple[dict[str, tuple[float, float] | None], tuple[float, float] | None]:
    """95% percentile intervals of each label's AUROC and of the mean AUROC, from `n_boot` resamples
    of the patients (`groups`: each row's patient; None: each row its own), the same resample for
    every label, so the mean's interval is paired. Images of one patient are correlated: resampling
    images would make the interval too narrow.

    The resamples come in a fixed number of chunks with their own seeds, run in parallel processes
    when there is enough work: the result depends on `seed` only, not on the number of cores."""
    if n_boot <= 0 or len(targets) == 0:
        return {label: None for label in labels}, None
    groups = np.arange(len(targets)) if groups is None else np.asarray(groups)
    order = np.argsort(groups, kind="stable")
    members = np.split(order, np.flatnonzero(np.diff(groups[order])) + 1)
    sizes = [len(c) for c in np.array_split(np.arange(n_boot), min(BOOTSTRAP_CHUNKS, n_boot))]
    seeds = np.random.SeedSequence(seed).spawn(len(sizes))
    jobs = min(len(sizes), os.cpu_count() or 1) if n_boot * len(labels) >= 3000 else 1
    if jobs > 1:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=jobs)(delayed(_bootstrap_chunk)(probs, targets, mask, members, k, s) for k, s in zip(sizes, seeds))
    else:
        parts = [_bootstrap_chunk(probs, targets, mask, members, k, s) for k, s in zip(sizes, seeds)]
    values = np.concatenate(parts)

    def interval(column: np.ndarray) -> tuple[float, float] | None:
        column = column[~np.isnan(column)]
        if len(column) < max(10, n_boot // 2):
            return None
        lo, hi = np.percentile(column, [2.5, 97.5])
        return float(lo), float(hi)

    per_label = {label: interval(values[:, j]) for j, label in enumerate(labels)}
    cols = [labels.index(label) for label in mean_over]
    means = np.array([np.mean(row[~np.isnan(row)]) if (~np.isnan(row)).any() else np.nan for row in values[:, cols]])
    return per_label, interval(means)


def mean_of(per_label: dict[str, dict[str, Any]], over: list[str], key: str = "auroc") -> float:
    values = [per_label[label][key] for label in over if label in per_label and not math.isnan(per_label[label][key])]
    return float(np.mean(values)) if values else math.nan


def holdout_metrics(split: Split, probs: np.ndarray, labels: list[str], mean_over: list[str], n_bootstrap: int,
                    seed: int = 0) -> dict[str, Any]:
    """One source's hold-out: per-finding AUROC with n, positives and a patient-level bootstrap interval, and
    the mean AUROC over the measurable findings of `mean_over`. A finding without both classes is
    `measurable: false` with AUROC None (not a number: no AUROC exists)."""
    t, m = split.targets, split.mask
    per_label = {}
    for j, label in enumerate(labels):
        y = t[m[:, j] > 0, j]
        measurable = _both_classes(y)
        per_label[label] = {"n": int(len(y)), "positives": int(y.sum()), "measurable": measurable,
                            "auroc": float(roc_auc_score(y, probs[m[:, j] > 0, j])) if measurable else None}
    measured = [label for label in mean_over if per_label[label]["measurable"]]
    cis, mean_ci = bootstrap_auroc(probs, t, m, labels, measured, n_bootstrap, seed, patient_groups(split))
    for label, values in per_label.items():
        values["auroc_ci"] = cis[label] if values["measurable"] else None
    return {"n": len(split), "split_version": split_version(split, ""), "mean_over": measured,
            "not_measurable": [label for label in labels if not per_label[label]["measurable"]],
            "mean_auroc": float(np.mean([per_label[label]["auroc"] for label in measured])) if measured else None,
            "mean_auroc_ci": mean_ci if measured else None, "per_label": per_label}


def slice_masks(frame: pd.DataFrame | None) -> list[tuple[str, str, np.ndarray]]:
    """(attribute, value, row mask) for Sex, Age bands, AP/PA (frontal images) and Frontal/Lateral."""
    if frame is None:
        return []
    out: list[tuple[str, str, np.ndarray]] = []
    sex = frame["Sex"].astype(str).str.strip()
    for value in ("Female", "Male"):
        out.append(("Sex", value, (sex == value).to_numpy()))
    age = pd.to_numeric(frame["Age"], errors="coerce").to_numpy(dtype=float)
    for name, lo, hi in AGE_BANDS:
        out.append(("Age", name, (age >= lo) & (age < hi)))
    view = frame["Frontal/Lateral"].astype(str).str.strip()
    appa = frame["AP/PA"].astype(str).str.strip().str.upper()
    for value in ("AP", "PA"):
        out.append(("AP/PA", value, ((view == "Frontal") & (appa == value)).to_numpy()))
    for value in ("Frontal", "Lateral"):
        out.append(("Frontal/Lateral", value, (view == value).to_numpy()))
    return [(a, v, m) for a, v, m in out if m.any()]


def slice_metrics(frame: pd.DataFrame | None, probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str],
                  mean_over: list[str], thresholds: dict[str, float], overall: float) -> list[dict[str, Any]]:
    """Each slice's mean AUROC (over `mean_over`), per-label AUROC, its gap to the whole (`gap` =
    slice - whole: negative when the slice does worse) and its size as positives per finding of
    `mean_over` (`min_positives`: an AUROC rests on its positives, not on the image count)."""
    out = []
    for attribute, value, rows in slice_masks(frame):
        per_label = {}
        for j, label in enumerate(labels):
            keep = rows & (mask[:, j] > 0)
            per_label[label] = label_metrics(targets[keep, j], probs[keep, j], thresholds[label])
        mean = mean_of(per_label, mean_over)
        positives = {label: per_label[label]["positives"] for label in mean_over}
        out.append({
            "slice": f"{attribute}={value}", "attribute": attribute, "value": value, "n": int(rows.sum()),
            "positives": positives, "min_positives": min(positives.values(), default=0),
            "mean_auroc": mean, "gap": mean - overall if not (math.isnan(mean) or math.isnan(overall)) else math.nan,
            "per_label": {label: {k: m[k] for k in ("n", "positives", "auroc", "sensitivity", "specificity")} for label, m in per_label.items()},
        })
    return out


def hard_case_scores(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str],
                     thresholds: dict[str, float]) -> list[dict[str, Any]]:
    """Images the model gets confidently wrong at the operating thresholds, most confident first.

    An image's score is its largest probability given to a wrong answer (p for a false positive,
    1 - p for a false negative) over the labels it is wrong on."""
    thr = np.array([thresholds[label] if not math.isnan(thresholds[label]) else DEFAULT_THRESHOLD for label in labels])
    pred = probs >= thr
    wrong = (pred != (targets > 0.5)) & (mask > 0)
    confidence = np.where(targets > 0.5, 1.0 - probs, probs)
    scored = np.where(wrong, confidence, -1.0)
    best = scored.argmax(axis=1)
    cases = []
    for i in np.flatnonzero(wrong.any(axis=1)):
        wrong_labels = [labels[j] for j in np.flatnonzero(wrong[i])]
        j = int(best[i])
        cases.append({"index": int(i), "score": float(scored[i, j]), "label": labels[j],
                      "error": "false positive" if targets[i, j] < 0.5 else "false negative",
                      "probability": float(probs[i, j]), "wrong_labels": wrong_labels})
    cases.sort(key=lambda c: -c["score"])
    return cases


# --------------------------------------------------------------------------------------------
# Loading a run: reference, checkpoint, config, model.
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
    from chexops.train.models import build_model
    from chexops.imaging.preprocessing import PreprocessSpec
    from chexops.train.checkpoint import load_checkpoint

    run_id, artifact = parse_run_ref(ref)
    run = get_run(client, run_id)
    local = download(client, run_id, artifact, workdir / "checkpoint")
    if local is None or not local.is_file():
        raise UserInputError(f"run {run_id} has no checkpoint artifact {artifact!r} (did its training finish?).")
    payload = load_checkpoint(local)
    for key in ("model", "model_config", "labels", "preprocessing"):
        if key not in payload:
            raise UserInputError(f"checkpoint {artifact} of run {run_id} lacks {key!r}; it is not a complete chexops checkpoint.")

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
            f"the config's labels ({', '.join(config.data.labels)}) differ from the checkpoint's ({', '.join(labels)}); "
            "evaluate with the config the model was trained with."
        )
    try:
        spec = PreprocessSpec.from_dict(payload["preprocessing"])
        model_cfg = ModelConfig.model_validate({**payload["model_config"], "pretrained_weights": None})
        model = build_model(model_cfg, len(labels), spec)
        model.load_state_dict(payload["model"])
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise UserInputError(f"checkpoint {artifact} of run {run_id} does not rebuild its model: {str(exc).splitlines()[0]}") from None
    if config.preprocess.spec() != spec:
        log.warning("The config's preprocessing differs from the checkpoint's; evaluating with the checkpoint's (what training used).")
    model.eval()
    return LoadedRun(run_id, run, payload, config, labels, model)


# --------------------------------------------------------------------------------------------
# Outputs: hard-case dataset, plots, model card.
# --------------------------------------------------------------------------------------------


def write_hard_cases(out: Path, split: Split, source_csv: Path | None, cases: list[dict[str, Any]], labels: list[str]) -> int:
    """The cases as a CheXpert-layout dataset under `out`: `CheXpert-v1.0-small/valid.csv` (the
    source rows verbatim) plus the images at their CSV paths; `cases.json` says why each is there."""
    folder = out / DATASET_DIR
    folder.mkdir(parents=True, exist_ok=True)
    details = []
    if split.frame is not None and split.paths is not None and source_csv is not None:
        source = pd.read_csv(source_csv, dtype=str, keep_default_na=False, na_filter=False)
        source.columns = [c.strip() for c in source.columns]
        rows = []
        for case in cases:
            i = case["index"]
            row = source.iloc[int(split.frame["csv_row"].iloc[i]) - 1].copy()
            rel = Path(str(row["Path"]).strip())
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(split.paths[i], target)
            rows.append(row)
            details.append({**case, "path": str(rel), "source_image": str(split.paths[i])})
        frame = pd.DataFrame(rows, columns=source.columns)
    else:  # images in memory (npz): PNGs and a CSV in the same layout
        from PIL import Image

        records = []
        for case in cases:
            i = case["index"]
            rel = Path(DATASET_DIR) / "valid" / f"patient{i + 1:05d}" / "study1" / "view1_frontal.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(split.images[i], dtype=np.uint8)).save(out / rel)
            record = {"Path": str(rel), "Sex": "", "Age": "", "Frontal/Lateral": "Frontal", "AP/PA": ""}
            record.update({label: f"{split.targets[i, j]:.1f}" for j, label in enumerate(labels)})
            records.append(record)
            details.append({**case, "path": str(rel)})
        frame = pd.DataFrame(records, columns=[*META_COLUMNS, *labels])
    frame.to_csv(folder / "valid.csv", index=False)
    (out / "cases.json").write_text(json.dumps(details, indent=2) + "\n")
    return len(details)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_roc(path: Path, probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str], per_label: dict, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    colors = plt.get_cmap("tab20")
    for j, label in enumerate(labels):
        keep = mask[:, j] > 0
        y, p = targets[keep, j], probs[keep, j]
        if not _both_classes(y):
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=1.2, color=colors(j % 20), label=f"{label} ({per_label[label]['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_reliability(path: Path, probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str], per_label: dict) -> None:
    plt = _pyplot()
    cols = min(4, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), dpi=90, squeeze=False)
    for j, label in enumerate(labels):
        ax = axes[j // cols][j % cols]
        keep = mask[:, j] > 0
        y, p = targets[keep, j], probs[keep, j]
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
        if len(y):
            prob_true, prob_pred = calibration_curve(y, p, n_bins=ECE_BINS, strategy="uniform")
            ax.plot(prob_pred, prob_true, marker="o", ms=3, lw=1)
        ece = per_label[label]["ece"]
        ax.set_title(f"{label}\nECE {ece:.3f}" if not math.isnan(ece) else label, fontsize=8)
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.tick_params(labelsize=7)
    for k in range(len(labels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.supxlabel("mean predicted probability", fontsize=9)
    fig.supylabel("observed frequency", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def model_card(result: dict[str, Any], loaded: LoadedRun, fingerprint: dict[str, Any]) -> str:
    """The model card: what the model is, what it was trained and evaluated on, how well it does, its limits."""
    tags = loaded.run.data.tags
    cfg = loaded.config
    pre = loaded.payload["preprocessing"]
    lines = [
        f"# Model card: chexops run `{loaded.run_id}`", "",
        "## Model",
        f"- Architecture: `{loaded.payload['model_config'].get('name')}` (multi-label, one sigmoid output per finding).",
        f"- Labels ({len(loaded.labels)}): {', '.join(loaded.labels)}.",
        f"- Preprocessing: grey scale, {pre['size']}×{pre['size']} ({pre['resample']}), {pre['channels']} channel(s), "
        f"normalised with mean {pre['mean']} and std {pre['std']}.",
        f"- Training run `{loaded.run_id}` at git commit `{tags.get('git_commit', 'unknown')}`"
        f"{' (uncommitted changes)' if tags.get('git_dirty') == 'True' else ''}.", "",
        "## Data",
        f"- Dataset kind `{cfg.data.kind}`, view filter `{cfg.data.view}`, data version `{fingerprint.get('data_version', tags.get('data_version', 'unknown'))}` "
        f"(sha256 `{str(fingerprint.get('sha256', tags.get('data_sha256', 'unknown')))[:16]}…`).",
        f"- Rows: {', '.join(f'{k} {v:,}' for k, v in fingerprint.get('rows', {}).items())}. Patients never cross the train/validation/test splits"
        + (f" (test: {fingerprint['test_source']})." if fingerprint.get("test_source") else "."),
        f"- Uncertain labels: training policy `{cfg.data.policy.uncertain}` (per label: "
        f"{', '.join(f'{k} {v}' for k, v in cfg.data.policy.uncertain_per_label.items()) or 'none'}); ignored in evaluation.",
        f"- Metrics below are on the **{result['split']}** split ({result['n']:,} images); thresholds were chosen on validation.", "",
        "## Metrics",
        f"Mean AUROC over {', '.join(result['mean_over'])}: **{_f(result['mean_auroc'])}**"
        + (f" (95% CI {_f(result['mean_auroc_ci'][0])}–{_f(result['mean_auroc_ci'][1])}, {result['bootstrap']} bootstrap resamples"
           f" of {result['bootstrap_groups']} {result['bootstrap_unit']}s)" if result.get("mean_auroc_ci") else "")
        + ".", "",
        "| finding | n (pos) | AUROC [95% CI] | AUPRC | threshold | sensitivity | specificity | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, m in result["per_label"].items():
        ci = m.get("auroc_ci")
        lines.append(f"| {label} | {m['n']} ({m['positives']}) | {_f(m['auroc'])}"
                     + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")
                     + f" | {_f(m['auprc'])} | {_f(m['threshold'])} | {_f(m['sensitivity'])} | {_f(m['specificity'])} | {_f(m['ece'])} |")
    rule = result["rule"] + (f" (target sensitivity {result['target_sensitivity']:.2f})" if result["rule"] == "sensitivity" else " (Youden's J)")
    lines += ["", f"Operating thresholds: rule `{rule}`, chosen on the validation split.", "", "## Slices",
              "Mean AUROC per slice and its gap to the whole (negative: the slice does worse).", "",
              "| slice | n | fewest positives of a finding | mean AUROC | gap |", "|---|---|---|---|---|"]
    for s in result["slices"]:
        lines.append(f"| {s['slice']} | {s['n']} | {s['min_positives']} | {_f(s['mean_auroc'])} | {_f(s['gap'], 3)} |")
    if not result["slices"]:
        lines.append("| (no slice metadata in this dataset) | | | | |")
    for name, h in (result.get("holdouts") or {}).items():
        lines += ["", f"## Hold-out of source `{name}`",
                  f"The newest {h['n']} rows of training source `{name}` (never trained on); mean AUROC over "
                  f"{', '.join(h['mean_over']) or 'no measurable finding'}: **{_f(h['mean_auroc'])}**.", "",
                  "| finding | n (pos) | AUROC [95% CI] |", "|---|---|---|"]
        for label, m in h["per_label"].items():
            ci = m.get("auroc_ci")
            lines.append(f"| {label} | {m['n']} ({m['positives']}) | "
                         + (f"{_f(m['auroc'])}" + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "") if m["measurable"] else "not measurable (one class)")
                         + " |")
    lines += [
        "", "## Intended use",
        "Research and engineering of the chexops platform; as a triage aid it would flag studies for a radiologist's "
        "earlier reading. It does not diagnose, and its outputs are not to be used for patient care without clinical validation.",
        "", "## Limits",
        "- Trained and evaluated on the data above only; performance on other hospitals, scanners or populations is unknown.",
        "- Labels come from report mining (CheXpert) and are noisy; uncertain labels are excluded from evaluation.",
        "- Small slices give wide intervals; a slice gap is only meaningful with enough images and positives.",
        f"- Calibration: see the reliability diagrams; mean ECE {_f(result['mean_ece'])}. Probabilities are not risks.",
        f"- Hard cases (the most confidently wrong images): {result['hard_cases']['count']} under `evaluation/hard_cases/`.",
    ]
    if "synth" in str(cfg.data.csv or "") or "synth" in str(cfg.data.root or ""):
        lines.append("- The data appears to be the synthetic demo dataset: these numbers say nothing about real radiographs.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The command.
# --------------------------------------------------------------------------------------------


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


def _predict(model, split: Split, spec, device) -> np.ndarray:
    from chexops.train.dataset import RadiographDataset
    from chexops.train.loop import predict

    ds = RadiographDataset(split, spec, cache=True, progress=False)
    return predict(model, ds, 128, device, amp=False)


def evaluate_run(ref: str, *, config_path: Path | None = None, rule: str = "youden", target_sensitivity: float = 0.9,
                 n_bootstrap: int = 1000, hard_cases: int = 32, seed: int = 0) -> dict[str, Any]:
    """Evaluate a training run and log the evaluation to it; returns the summary (JSON-safe)."""
    import torch
    from mlflow.entities import Metric

    from chexops.imaging.preprocessing import PreprocessSpec

    if rule not in RULES:
        raise UserInputError(f"unknown threshold rule {rule!r}: use one of {', '.join(RULES)}.")
    if not 0.0 < target_sensitivity <= 1.0:
        raise UserInputError(f"--target-sensitivity must be within (0, 1], got {target_sensitivity}.")
    if n_bootstrap < 0 or hard_cases < 0:
        raise UserInputError("--bootstrap and --hard-cases must not be negative.")
    started = time.monotonic()
    client = mlflow_client()
    with tempfile.TemporaryDirectory(prefix="chexops-eval-") as tmp:
        work = Path(tmp)
        loaded = load_run(client, ref, config_path, work)
        config, labels = loaded.config, loaded.labels
        splits = load_splits(config)
        spec = PreprocessSpec.from_dict(loaded.payload["preprocessing"])
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = loaded.model.to(device)
        mean_over = config.eval.mean_labels(labels)

        # Thresholds on validation.
        val = splits.val
        val_probs = _predict(model, val, spec, device)
        thresholds = {}
        for j, label in enumerate(labels):
            keep = val.mask[:, j] > 0
            thresholds[label] = choose_threshold(val.targets[keep, j], val_probs[keep, j], rule, target_sensitivity)
        defaulted = [label for label, t in thresholds.items() if math.isnan(t)]
        if len(defaulted) == len(labels):
            raise DataError(f"the validation split ({len(val)} images) has no label with both positive and negative "
                            "examples, so no operating threshold can be chosen.")
        if defaulted:  # a service needs a number for every label: the default, said out loud
            log.warning("No threshold can be chosen for %s (one class only in validation); using %s.",
                        ", ".join(defaulted), DEFAULT_THRESHOLD)
            thresholds.update({label: DEFAULT_THRESHOLD for label in defaulted})
        val_at = {}
        for j, label in enumerate(labels):
            keep = val.mask[:, j] > 0
            val_at[label] = {**at_threshold(val.targets[keep, j], val_probs[keep, j], thresholds[label]),
                             "auroc": float(roc_auc_score(val.targets[keep, j], val_probs[keep, j])) if _both_classes(val.targets[keep, j]) else math.nan}

        # Metrics on the report split.
        if splits.test is not None:
            report, split_name, probs = splits.test, "test", _predict(model, splits.test, spec, device)
            source = config.data.test_csv or config.data.csv  # a carved test split's rows are csv's
            source_csv = Path(source) if source else None
        else:
            report, split_name, probs = val, "validation", val_probs
            source_csv = Path(config.data.csv) if config.data.csv else None
        t, m = report.targets, report.mask
        per_label = {}
        for j, label in enumerate(labels):
            keep = m[:, j] > 0
            per_label[label] = label_metrics(t[keep, j], probs[keep, j], thresholds[label])
        groups = patient_groups(report)
        cis, mean_ci = bootstrap_auroc(probs, t, m, labels, mean_over, n_bootstrap, seed, groups)
        for label in labels:
            per_label[label]["auroc_ci"] = cis[label]
        overall = mean_of(per_label, mean_over)
        slices = slice_metrics(report.frame, probs, t, m, labels, mean_over, thresholds, overall)
        cases = hard_case_scores(probs, t, m, labels, thresholds)[:hard_cases]
        holdouts = {name: holdout_metrics(split, _predict(model, split, spec, device), labels, mean_over, n_bootstrap, seed)
                    for name, split in holdout_splits(config).items()}

        fingerprint = splits.fingerprint
        settings = {"config": config.to_dict(), "rule": rule, "target_sensitivity": target_sensitivity,
                    "bootstrap": n_bootstrap, "seed": seed}
        result: dict[str, Any] = {
            "run_id": loaded.run_id, "evaluation_id": new_id(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "split": split_name, "n": len(report), "validation_n": len(val),
            "split_version": fingerprint["split_versions"][report.name], "test_source": fingerprint.get("test_source"),
            "test_patients_in_train": fingerprint.get("test_patients_in_train", 0),
            "config_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest(),
            "data_version": fingerprint["data_version"], "data_sha256": fingerprint["sha256"],
            "trained_data_version": loaded.run.data.tags.get("data_version"),
            "mean_over": mean_over, "mean_auroc": overall, "mean_auroc_ci": mean_ci,
            "mean_ece": mean_of(per_label, mean_over, "ece"),
            "rule": rule, "target_sensitivity": target_sensitivity if rule == "sensitivity" else None,
            "thresholds": thresholds, "thresholds_defaulted": defaulted, "bootstrap": n_bootstrap,
            "bootstrap_unit": "patient" if groups is not None else "image",
            "bootstrap_groups": int(len(np.unique(groups))) if groups is not None else len(report),
            "per_label": per_label,
            "validation": {"mean_auroc": mean_of(val_at, mean_over), "per_label": val_at},
            "slices": slices,
            "worst_slice": min((s for s in slices if not math.isnan(s["gap"])), key=lambda s: s["gap"], default=None),
            "holdouts": holdouts,
        }
        if result["data_version"] != result["trained_data_version"]:
            log.warning("Evaluating on data version %s; the model was trained on %s.", result["data_version"], result["trained_data_version"])

        # Files: this evaluation's own record, next to (never over) earlier ones.
        eval_id = result["evaluation_id"]
        out = work / EVAL_DIR / eval_id
        out.mkdir(parents=True)
        count = write_hard_cases(out / "hard_cases", report, source_csv, cases, labels)
        result["hard_cases"] = {"count": count, "artifact_path": artifact_path(eval_id, "hard_cases"),
                                "csv": artifact_path(eval_id, f"hard_cases/{DATASET_DIR}/valid.csv")}
        plot_roc(out / "roc.png", probs, t, m, labels, per_label, f"ROC on {split_name} (mean AUROC {_f(overall)})")
        plot_reliability(out / "reliability.png", probs, t, m, labels, per_label)
        result = _clean(result)
        (out / "thresholds.json").write_text(json.dumps({"rule": rule, "target_sensitivity": result["target_sensitivity"],
                                                         "thresholds": result["thresholds"], "labels": labels,
                                                         "chosen_on": "validation", "defaulted": defaulted}, indent=2) + "\n")
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "model_card.md").write_text(model_card(result, loaded, fingerprint))
        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

        # MLflow: the same run.
        now = int(time.time() * 1000)
        metrics = {"eval_mean_auroc": result["mean_auroc"], "eval_mean_ece": result["mean_ece"],
                   "eval_validation_mean_auroc": result["validation"]["mean_auroc"], "eval_hard_cases": float(count)}
        if result["worst_slice"]:
            metrics["eval_worst_slice_gap"] = result["worst_slice"]["gap"]
        if mean_ci:
            metrics["eval_mean_auroc_ci_low"], metrics["eval_mean_auroc_ci_high"] = result["mean_auroc_ci"]
        for label, v in result["per_label"].items():
            key = metric_key(label)
            for name in ("auroc", "auprc", "sensitivity", "specificity", "ece", "threshold"):
                metrics[f"eval_{name}.{key}"] = v[name]
        metrics.update(holdout_metric_values(result["holdouts"]))
        client.log_batch(loaded.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None])
        client.log_artifacts(loaded.run_id, str(out), artifact_path(eval_id))
        client.set_tag(loaded.run_id, *index_entry(result))
        client.set_tag(loaded.run_id, "evaluated", "true")
        client.set_tag(loaded.run_id, "eval_rule", rule)

    result["artifacts"] = [artifact_path(eval_id, name) for name in ARTIFACTS]
    result["artifact_uri"] = f"runs:/{loaded.run_id}/{artifact_path(eval_id)}"
    result["tracking_uri"] = client.tracking_uri
    result["seconds"] = round(time.monotonic() - started, 1)
    log.info("Run %s: %s mean AUROC %s (rule %s), worst slice %s, %d hard cases, %.0f s", loaded.run_id, split_name,
             _f(result["mean_auroc"]), rule, result["worst_slice"]["slice"] if result["worst_slice"] else "n/a", count, result["seconds"])
    return result


def format_result(result: dict[str, Any]) -> str:
    """The human summary of `evaluate_run`."""
    ci = result.get("mean_auroc_ci")
    lines = [f"Run {result['run_id']} evaluation {result['evaluation_id']}: {result['split']} mean AUROC {_f(result['mean_auroc'])}"
             + (f" (95% CI {_f(ci[0])}-{_f(ci[1])}, {result['bootstrap_unit']}s resampled)" if ci else "")
             + f" over {', '.join(result['mean_over'])}",
             f"thresholds by {result['rule']} on validation; metrics on {result['split']} ({result['n']} images)", "",
             f"{'finding':<28}{'AUROC':>8}{'AUPRC':>8}{'thr':>7}{'sens':>7}{'spec':>7}{'ECE':>7}"]
    for label, m in result["per_label"].items():
        lines.append(f"{label:<28}{_f(m['auroc']):>8}{_f(m['auprc']):>8}{_f(m['threshold'], 2):>7}{_f(m['sensitivity'], 2):>7}"
                     f"{_f(m['specificity'], 2):>7}{_f(m['ece']):>7}")
    lines += ["", f"{'slice':<24}{'n':>6}{'min pos':>8}{'mean AUROC':>12}{'gap':>8}"]
    for s in result["slices"]:
        lines.append(f"{s['slice']:<24}{s['n']:>6}{s['min_positives']:>8}{_f(s['mean_auroc']):>12}{_f(s['gap']):>8}")
    for name, h in (result.get("holdouts") or {}).items():
        ci = h.get("mean_auroc_ci")
        lines += ["", f"hold-out of source {name} ({h['n']} images): mean AUROC {_f(h['mean_auroc'])}"
                  + (f" (95% CI {_f(ci[0])}-{_f(ci[1])})" if ci else "") + f" over {', '.join(h['mean_over']) or 'no measurable finding'}",
                  f"{'finding':<28}{'AUROC':>8}{'n':>6}{'pos':>6}"]
        for label, m in h["per_label"].items():
            lines.append(f"{label:<28}{_f(m['auroc']) if m['measurable'] else 'not measurable':>8}{m['n']:>6}{m['positives']:>6}")
    lines += ["", f"{result['hard_cases']['count']} hard cases, plots and model card logged to {result['artifact_uri']}"]
    return "\n".join(lines)
