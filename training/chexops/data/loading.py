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
    targets, mask = apply_policy(table.values, cfg.labels, table.policy(cfg.policy))
    return Split(name, targets, mask, paths=paths, frame=table.frame), table


def _eval_view(split: Split, values: np.ndarray, cfg: DataConfig, blank: str | None = None) -> Split:
    """Validation and test targets: uncertain is ignored (not guessed), blank as configured (or as the CSV declares)."""
    policy = cfg.policy.model_copy(update={"uncertain": "ignore", "uncertain_per_label": {}, **({"blank": blank} if blank else {})})
    split.targets, split.mask = apply_policy(values, cfg.labels, policy)
    return split


def _rows(name: str, full: Split, table: ChexpertTable, idx: np.ndarray) -> Split:
    return Split(name, full.targets[idx], full.mask[idx], [full.paths[i] for i in idx], frame=table.frame.iloc[idx].reset_index(drop=True))


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
        fingerprint["sha256"] = sha256_file(Path(cfg.csv))
        fingerprint["raw_counts"] = label_counts(table.values, cfg.labels)
        rest = np.arange(len(full))
        test = None
        if cfg.test_csv is not None:
            test, test_table = _chexpert_split("test", Path(cfg.test_csv), cfg)
            test = _eval_view(test, test_table.values, cfg, test_table.blank)
            fingerprint["test_sha256"] = sha256_file(Path(cfg.test_csv))
            fingerprint["test_source"] = "test_csv"
            shared = set(test.frame["patient"]) & set(table.frame["patient"])
            fingerprint["test_patients_in_train"] = len(shared)
            if shared:
                log.warning("%d patients of %s are also in %s: the test split is not held out for them.", len(shared), cfg.test_csv, cfg.csv)
        elif cfg.test_fraction > 0:
            rest, test_idx = split_by_patient(table.frame["patient"], cfg.test_fraction, cfg.test_seed)
            test = _eval_view(_rows("test", full, table, test_idx), table.values[test_idx], cfg, table.blank)
            fingerprint["test_source"] = f"carved from csv by patient: fraction {cfg.test_fraction}, seed {cfg.test_seed}"
        train_idx, val_idx = split_by_patient(table.frame["patient"].iloc[rest].reset_index(drop=True), cfg.val_fraction, config.seed)
        train = _rows("train", full, table, rest[train_idx])
        val = _eval_view(_rows("val", full, table, rest[val_idx]), table.values[rest[val_idx]], cfg, table.blank)
        splits = Splits(cfg.labels, train, val, test)
        fingerprint["patients"] = {s.name: int(s.frame["patient"].nunique()) for s in (train, val, test) if s is not None}
        prepared = manifest_version(cfg.csv)  # images from `chexops data prepare`: their manifest's version
        if prepared:
            fingerprint.update(prepared)
    fingerprint["rows"] = {s.name: len(s) for s in (splits.train, splits.val, splits.test) if s is not None}
    fingerprint["policy_counts"] = {
        s.name: policy_counts(s.targets, s.mask, cfg.labels) for s in (splits.train, splits.val, splits.test) if s is not None
    }
    basis = json.dumps({k: fingerprint.get(k) for k in ("sha256", "view", "policy", "rows", "test_sha256", "test_source",
                                                    "prepared_data_version")}, sort_keys=True)
    fingerprint["data_version"] = hashlib.sha256(basis.encode()).hexdigest()[:12]
    fingerprint["split_versions"] = {s.name: split_version(s, fingerprint["sha256"]) for s in (splits.train, splits.val, splits.test) if s is not None}
    splits.fingerprint = fingerprint
    for s in (splits.train, splits.val, splits.test):
        if s is not None and len(s) == 0:
            raise DataError(f"the {s.name} split is empty; check the data and data.val_fraction.")
    from .sources import add_sources  # data.sources: feedback and other extra sources, weighted, with a hold-out

    return add_sources(splits, config)
