"""The evaluation's metrics: pure functions of (targets, probabilities, mask), scikit-learn underneath.

Operating thresholds (chosen on validation), AUROC, AUPRC, Brier, sensitivity and specificity at the
thresholds, the expected calibration error (assembled here from `sklearn.calibration.calibration_curve`'s
bins), patient-level bootstrap intervals of the AUROCs (`chexops.core.stats`), the hold-out of a training
source, slices and hard cases.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, recall_score, roc_auc_score, roc_curve

from chexops.core.errors import UserInputError
from chexops.core.labels import DEFAULT_THRESHOLD
from chexops.core.stats import Groups, bootstrap, percentile_interval
from chexops.data.splits import Split, patient_groups, split_version

RULES = ("youden", "sensitivity")
ECE_BINS = 10
# Age bands of the slices: [low, high) in years.
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<40", 0, 40),
    ("40-59", 40, 60),
    ("60-79", 60, 80),
    (">=80", 80, 200),
)
BOOTSTRAP_CHUNKS = 8


def both_classes(y: np.ndarray) -> bool:
    return len(y) > 0 and 0 < int(y.sum()) < len(y)


def choose_threshold(y: np.ndarray, p: np.ndarray, rule: str, target_sensitivity: float = 0.9) -> float:
    """The operating threshold of one label (predict positive when p >= threshold), on validation data.

    `youden`: the ROC point that maximises sensitivity + specificity - 1.
    `sensitivity`: the highest threshold whose sensitivity reaches `target_sensitivity`.
    NaN when the data has a single class (no threshold can be chosen).
    """
    if rule not in RULES:
        raise UserInputError(f"unknown threshold rule {rule!r}: use one of {', '.join(RULES)}.")
    if not both_classes(y):
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
    both = both_classes(y)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "positives": int(y.sum()),
        "auroc": float(roc_auc_score(y, p)) if both else math.nan,
        "auprc": float(average_precision_score(y, p)) if both else math.nan,
        "brier": float(brier_score_loss(y, p, labels=[0, 1])) if len(y) else math.nan,
        "ece": expected_calibration_error(y, p),
        "threshold": threshold,
    }
    out.update(at_threshold(y, p, threshold))
    return out


def choose_thresholds(
    split: Split, probs: np.ndarray, labels: list[str], rule: str, target_sensitivity: float
) -> tuple[dict[str, float], list[str]]:
    """Every label's operating threshold on `split` (validation), and the labels with one class there,
    whose threshold defaults to DEFAULT_THRESHOLD (a service needs a number for every label)."""
    thresholds = {}
    for j, label in enumerate(labels):
        keep = split.mask[:, j] > 0
        thresholds[label] = choose_threshold(split.targets[keep, j], probs[keep, j], rule, target_sensitivity)
    defaulted = [label for label, t in thresholds.items() if math.isnan(t)]
    thresholds.update({label: DEFAULT_THRESHOLD for label in defaulted})
    return thresholds, defaulted


def validation_metrics(
    split: Split, probs: np.ndarray, labels: list[str], thresholds: dict[str, float]
) -> dict[str, Any]:
    """Per label on the split that chose the thresholds: sensitivity, specificity and AUROC."""
    out = {}
    for j, label in enumerate(labels):
        keep = split.mask[:, j] > 0
        y, p = split.targets[keep, j], probs[keep, j]
        out[label] = {
            **at_threshold(y, p, thresholds[label]),
            "auroc": float(roc_auc_score(y, p)) if both_classes(y) else math.nan,
        }
    return out


def per_label_metrics(
    probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str], thresholds: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """`label_metrics` of every label over its unmasked rows."""
    out = {}
    for j, label in enumerate(labels):
        keep = mask[:, j] > 0
        out[label] = label_metrics(targets[keep, j], probs[keep, j], thresholds[label])
    return out


def _bootstrap_chunk(
    probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, groups: Groups, n_boot: int, seed: np.random.SeedSequence
) -> np.ndarray:
    """AUROC of every label on `n_boot` resamples of the groups (NaN where a resample has one class)."""
    n_labels = targets.shape[1]
    # Labels without masked rows are scored in one multilabel call per resample (much less
    # per-call overhead); the others, and any resample where a label has one class, one by one.
    full = [j for j in range(n_labels) if (mask[:, j] > 0).all()]

    def aurocs(idx: np.ndarray) -> np.ndarray:
        values = np.full(n_labels, np.nan)
        todo = list(range(n_labels))
        if full:
            y = targets[np.ix_(idx, full)]
            if all(both_classes(y[:, k]) for k in range(len(full))):
                values[full] = roc_auc_score(y, probs[np.ix_(idx, full)], average=None)
                todo = [j for j in todo if j not in full]
        for j in todo:
            keep = mask[idx, j] > 0
            y = targets[idx, j][keep]
            if both_classes(y):
                values[j] = roc_auc_score(y, probs[idx, j][keep])
        return values

    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        return bootstrap(aurocs, groups, n_boot, np.random.default_rng(seed))


def bootstrap_auroc(
    probs: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    labels: list[str],
    mean_over: list[str],
    n_boot: int,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[dict[str, tuple[float, float] | None], tuple[float, float] | None]:
    """95% percentile intervals of each label's AUROC and of the mean AUROC, from `n_boot` resamples
    of the patients (`groups`: each row's patient; None: each row its own), the same resample for
    every label, so the mean's interval is paired. Images of one patient are correlated: resampling
    images would make the interval too narrow.

    The resamples come in a fixed number of chunks with their own seeds, run in parallel processes
    when there is enough work: the result depends on `seed` only, not on the number of cores."""
    if n_boot <= 0 or len(targets) == 0:
        return {label: None for label in labels}, None
    units = Groups.rows(len(targets)) if groups is None else Groups(groups)
    sizes = [len(c) for c in np.array_split(np.arange(n_boot), min(BOOTSTRAP_CHUNKS, n_boot))]
    seeds = np.random.SeedSequence(seed).spawn(len(sizes))
    jobs = min(len(sizes), os.cpu_count() or 1) if n_boot * len(labels) >= 3000 else 1
    if jobs > 1:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=jobs)(
            delayed(_bootstrap_chunk)(probs, targets, mask, units, k, s) for k, s in zip(sizes, seeds)
        )
    else:
        parts = [_bootstrap_chunk(probs, targets, mask, units, k, s) for k, s in zip(sizes, seeds)]
    values = np.concatenate(parts)
    enough = max(10, n_boot // 2)  # fewer resamples with both classes: no interval
    per_label = {label: percentile_interval(values[:, j], min_count=enough) for j, label in enumerate(labels)}
    cols = [labels.index(label) for label in mean_over]
    means = np.array([np.mean(row[~np.isnan(row)]) if (~np.isnan(row)).any() else np.nan for row in values[:, cols]])
    return per_label, percentile_interval(means, min_count=enough)


def mean_of(per_label: dict[str, dict[str, Any]], over: list[str], key: str = "auroc") -> float:
    values = [per_label[label][key] for label in over if label in per_label and not math.isnan(per_label[label][key])]
    return float(np.mean(values)) if values else math.nan


def holdout_metrics(
    split: Split, probs: np.ndarray, labels: list[str], mean_over: list[str], n_bootstrap: int, seed: int = 0
) -> dict[str, Any]:
    """One source's hold-out: per-finding AUROC with n, positives and a patient-level bootstrap interval, and
    the mean AUROC over the measurable findings of `mean_over`. A finding without both classes is
    `measurable: false` with AUROC None (not a number: no AUROC exists)."""
    t, m = split.targets, split.mask
    per_label = {}
    for j, label in enumerate(labels):
        y = t[m[:, j] > 0, j]
        measurable = both_classes(y)
        per_label[label] = {
            "n": int(len(y)),
            "positives": int(y.sum()),
            "measurable": measurable,
            "auroc": float(roc_auc_score(y, probs[m[:, j] > 0, j])) if measurable else None,
        }
    measured = [label for label in mean_over if per_label[label]["measurable"]]
    cis, mean_ci = bootstrap_auroc(probs, t, m, labels, measured, n_bootstrap, seed, patient_groups(split))
    for label, values in per_label.items():
        values["auroc_ci"] = cis[label] if values["measurable"] else None
    return {
        "n": len(split),
        "split_version": split_version(split, ""),
        "mean_over": measured,
        "not_measurable": [label for label in labels if not per_label[label]["measurable"]],
        "mean_auroc": float(np.mean([per_label[label]["auroc"] for label in measured])) if measured else None,
        "mean_auroc_ci": mean_ci if measured else None,
        "per_label": per_label,
    }


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


def slice_metrics(
    frame: pd.DataFrame | None,
    probs: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    labels: list[str],
    mean_over: list[str],
    thresholds: dict[str, float],
    overall: float,
) -> list[dict[str, Any]]:
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
        out.append(
            {
                "slice": f"{attribute}={value}",
                "attribute": attribute,
                "value": value,
                "n": int(rows.sum()),
                "positives": positives,
                "min_positives": min(positives.values(), default=0),
                "mean_auroc": mean,
                "gap": mean - overall if not (math.isnan(mean) or math.isnan(overall)) else math.nan,
                "per_label": {
                    label: {k: m[k] for k in ("n", "positives", "auroc", "sensitivity", "specificity")}
                    for label, m in per_label.items()
                },
            }
        )
    return out


def worst_slice(slices: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The slice furthest below the whole (most negative gap), None when no slice has a gap."""
    return min((s for s in slices if not math.isnan(s["gap"])), key=lambda s: s["gap"], default=None)


def hard_case_scores(
    probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str], thresholds: dict[str, float]
) -> list[dict[str, Any]]:
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
        cases.append(
            {
                "index": int(i),
                "score": float(scored[i, j]),
                "label": labels[j],
                "error": "false positive" if targets[i, j] < 0.5 else "false negative",
                "probability": float(probs[i, j]),
                "wrong_labels": wrong_labels,
            }
        )
    cases.sort(key=lambda c: -c["score"])
    return cases
