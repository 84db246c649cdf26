"""Splits of a CheXpert-layout CSV: images, targets and masks under the uncertainty policy, by patient, versioned."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexops.config import DataConfig
from chexops.core.errors import DataError
from chexops.data.chexpert import (
    ChexpertTable,
    apply_policy,
    check_images,
    filter_view,
    image_paths,
    read_chexpert_csv,
)

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One split: images as paths (read on demand) or as an in-memory uint8 array, with targets and
    a loss mask (rows × labels)."""

    name: str
    targets: np.ndarray
    mask: np.ndarray
    paths: list[Path] | None = None
    images: np.ndarray | None = None
    frame: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class Splits:
    labels: list[str]
    train: Split
    val: Split
    test: Split | None
    fingerprint: dict[str, Any] = field(default_factory=dict)


def label_counts(values: np.ndarray, labels: list[str]) -> dict[str, dict[str, int]]:
    """Raw counts per label of 1 / 0 / -1 / blank."""
    return {
        label: {
            "positive": int((values[:, j] == 1).sum()),
            "negative": int((values[:, j] == 0).sum()),
            "uncertain": int((values[:, j] == -1).sum()),
            "blank": int(np.isnan(values[:, j]).sum()),
        }
        for j, label in enumerate(labels)
    }


def policy_counts(targets: np.ndarray, mask: np.ndarray, labels: list[str]) -> dict[str, dict[str, int]]:
    """Counts per label after the uncertainty policy: positive, negative, ignored."""
    return {
        label: {
            "positive": int(((targets[:, j] == 1) & (mask[:, j] > 0)).sum()),
            "negative": int(((targets[:, j] == 0) & (mask[:, j] > 0)).sum()),
            "ignored": int((mask[:, j] == 0).sum()),
        }
        for j, label in enumerate(labels)
    }


def _drop_bad_images(table: ChexpertTable, paths: list[Path], cfg: DataConfig) -> tuple[ChexpertTable, list[Path]]:
    missing, unreadable = check_images(paths)
    if not missing and not unreadable:
        return table, paths
    parts = []
    for what, idx in (("missing", missing), ("unreadable", unreadable)):
        if idx:
            named = ", ".join(f"row {table.frame['csv_row'].iloc[i]}: {paths[i]}" for i in idx[:3])
            parts.append(f"{len(idx)} {what} ({named}{', ...' if len(idx) > 3 else ''})")
    message = f"{table.path}: of {len(paths)} images, " + "; ".join(parts) + "."
    if not cfg.skip_bad_images:
        raise DataError(message + " Fix the dataset or set data.skip_bad_images: true to leave them out.")
    log.warning("%s Skipping them (data.skip_bad_images is true).", message)
    bad = set(missing) | set(unreadable)
    keep = np.array([i for i in range(len(paths)) if i not in bad], dtype=int)
    if len(keep) == 0:
        raise DataError(f"{table.path}: no readable image is left after skipping the bad ones.")
    return table.subset(keep), [paths[i] for i in keep]


def chexpert_split(name: str, csv: Path, cfg: DataConfig) -> tuple[Split, ChexpertTable]:
    table = filter_view(read_chexpert_csv(csv, cfg.labels), cfg.view)
    if len(table) == 0:
        raise DataError(f"{csv}: no rows are left after the view filter {cfg.view!r}.")
    paths = image_paths(table, cfg.root)
    table, paths = _drop_bad_images(table, paths, cfg)
    targets, mask = apply_policy(table.values, cfg.labels, table.policy(cfg.policy))
    return Split(name, targets, mask, paths=paths, frame=table.frame), table


def eval_view(split: Split, values: np.ndarray, cfg: DataConfig, blank: str | None = None) -> Split:
    """Validation and test targets: uncertain is ignored (not guessed), blank as configured (or as the CSV declares)."""
    policy = cfg.policy.model_copy(
        update={"uncertain": "ignore", "uncertain_per_label": {}, **({"blank": blank} if blank else {})}
    )
    split.targets, split.mask = apply_policy(values, cfg.labels, policy)
    return split


def _rows(name: str, full: Split, table: ChexpertTable, idx: np.ndarray) -> Split:
    return Split(
        name,
        full.targets[idx],
        full.mask[idx],
        [full.paths[i] for i in idx],
        frame=table.frame.iloc[idx].reset_index(drop=True),
    )


def split_version(split: Split, source_sha256: str) -> str:
    """The identity of exactly what a split holds (its images by dataset path, targets and mask):
    two evaluations are comparable only when their split versions are equal."""
    digest = hashlib.sha256(split.name.encode())
    if split.frame is not None and "Path" in split.frame:
        digest.update("\n".join(split.frame["Path"].astype(str)).encode())
    else:  # images in memory: the archive they came from and the split's size
        digest.update(f"{source_sha256}:{len(split)}".encode())
    digest.update(np.ascontiguousarray(split.targets, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(split.mask, dtype=np.float32).tobytes())
    return digest.hexdigest()[:12]


def patient_groups(split: Split) -> np.ndarray | None:
    """Each row's patient as an integer group (for resampling patients), or None without patients."""
    if split.frame is None or "patient" not in split.frame:
        return None
    return pd.factorize(split.frame["patient"])[0]
