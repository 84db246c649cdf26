"""Classification metrics per label (scikit-learn), respecting the label mask."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from chexops.core.labels import metric_key


def auroc_per_label(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str]) -> dict[str, float]:
    """AUROC of each label over its unmasked rows; NaN where only one class is present."""
    out = {}
    for j, label in enumerate(labels):
        keep = mask[:, j] > 0
        y = targets[keep, j]
        out[label] = float(roc_auc_score(y, probs[keep, j])) if len(np.unique(y)) == 2 else math.nan
    return out


def mean_auroc(per_label: dict[str, float], over: list[str]) -> float:
    values = [per_label[label] for label in over if not math.isnan(per_label.get(label, math.nan))]
    return float(np.mean(values)) if values else math.nan


def as_metrics(prefix: str, per_label: dict[str, float]) -> dict[str, float]:
    """{'val_auroc.Pleural_Effusion': 0.9, ...}, NaNs left out (MLflow rejects them)."""
    return {f"{prefix}.{metric_key(k)}": v for k, v in per_label.items() if not math.isnan(v)}
