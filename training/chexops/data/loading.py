"""From a data config to train / validation / test splits, with a data fingerprint (no torch)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import Config, DataConfig
from ..errors import DataError
from ..hashing import sha256_file
from . import npz
from .prepare import manifest_version
from .chexpert import ChexpertTable, apply_policy, check_images, filter_view, image_paths, read_chexpert_csv, split_by_patient

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


def _chexpert_split(name: str, csv: Path, cfg: DataConfig) -> tuple[Split, ChexpertTable]:
    table = filter_view(read_chexpert_csv(csv, cfg.labels), cfg.view)
    if len(table) == 0:
        raise DataError(f"{csv}: no rows are left after the view filter {cfg.view!r}.")
    paths = image_paths(table, cfg.root)
    table, paths = _drop_bad_images(table, paths, cfg)
    targets, mask = apply_policy(table.values, cfg.labels, cfg.policy)
    return Split(name, targets, mask, paths=paths, frame=table.frame), table


def _eval_view(split: Split, values: np.ndarray, cfg: DataConfig) -> Split:
    """Validation and test targets: uncertain is ignored (not guessed), blank as configured."""
    policy = cfg.policy.model_copy(update={"uncertain": "ignore", "uncertain_per_label": {}})
    split.targets, split.mask = apply_policy(values, cfg.labels, policy)
    return split


def load_splits(config: Config) -> Splits:
    """Read, validate and split the configured dataset; raises `DataError` on any problem."""
    cfg = config.data
    fingerprint: dict[str, Any] = {"kind": cfg.kind, "view": cfg.view, "policy": cfg.policy.model_dump()}
    if cfg.kind == "npz":
        arrays = npz.read_npz(cfg.npz, cfg.labels)
        made = {
            name: Split(name, y, np.ones_like(y), images=x) for name, (x, y) in arrays.items()
        }
        fingerprint["sha256"] = sha256_file(Path(cfg.npz))
        splits = Splits(cfg.labels, made["train"], made["val"], made.get("test"))
    else:
        full, table = _chexpert_split("train", Path(cfg.csv), cfg)
        train_idx, val_idx = split_by_patient(table.frame["patient"], cfg.val_fraction, config.seed)
        train = Split("train", full.targets[train_idx], full.mask[train_idx], [full.paths[i] for i in train_idx], frame=table.frame.iloc[train_idx].reset_index(drop=True))
        val = Split("val", full.targets[val_idx], full.mask[val_idx], [full.paths[i] for i in val_idx], frame=table.frame.iloc[val_idx].reset_index(drop=True))
        val = _eval_view(val, table.values[val_idx], cfg)
        test = None
        fingerprint["sha256"] = sha256_file(Path(cfg.csv))
        fingerprint["raw_counts"] = label_counts(table.values, cfg.labels)
        if cfg.test_csv is not None:
            test, test_table = _chexpert_split("test", Path(cfg.test_csv), cfg)
            test = _eval_view(test, test_table.values, cfg)
            fingerprint["test_sha256"] = sha256_file(Path(cfg.test_csv))
        splits = Splits(cfg.labels, train, val, test)
        fingerprint["patients"] = {"train": int(train.frame["patient"].nunique()), "val": int(val.frame["patient"].nunique())}
        prepared = manifest_version(cfg.csv)  # images from `chexops data prepare`: their manifest's version
        if prepared:
            fingerprint.update(prepared)
    fingerprint["rows"] = {s.name: len(s) for s in (splits.train, splits.val, splits.test) if s is not None}
    fingerprint["policy_counts"] = {
        s.name: policy_counts(s.targets, s.mask, cfg.labels) for s in (splits.train, splits.val, splits.test) if s is not None
    }
    basis = json.dumps({k: fingerprint[k] for k in ("sha256", "view", "policy", "rows", "prepared_data_version") if k in fingerprint},
                       sort_keys=True)
    fingerprint["data_version"] = hashlib.sha256(basis.encode()).hexdigest()[:12]
    splits.fingerprint = fingerprint
    for s in (splits.train, splits.val, splits.test):
        if s is not None and len(s) == 0:
            raise DataError(f"the {s.name} split is empty; check the data and data.val_fraction.")
    return splits
