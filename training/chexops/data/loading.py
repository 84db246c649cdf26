"""From a data config to train / validation / test splits, with a data fingerprint (no torch)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from chexops.config import Config
from chexops.core.errors import DataError
from chexops.core.files import sha256_file
from chexops.data import npz
from chexops.data.chexpert import (
    split_by_patient,
)
from chexops.data.manifest import manifest_version
from chexops.data.splits import (
    Split,
    Splits,
    _rows,
    chexpert_split,
    eval_view,
    label_counts,
    policy_counts,
    split_version,
)

log = logging.getLogger(__name__)


def load_splits(config: Config) -> Splits:
    """Read, validate and split the configured dataset; raises `DataError` on any problem."""
    cfg = config.data
    fingerprint: dict[str, Any] = {"kind": cfg.kind, "view": cfg.view, "policy": cfg.policy.model_dump()}
    if cfg.kind == "npz":
        arrays = npz.read_npz(cfg.npz, cfg.labels)
        made = {name: Split(name, y, np.ones_like(y), images=x) for name, (x, y) in arrays.items()}
        fingerprint["sha256"] = sha256_file(Path(cfg.npz))
        splits = Splits(cfg.labels, made["train"], made["val"], made.get("test"))
    else:
        full, table = chexpert_split("train", Path(cfg.csv), cfg)
        fingerprint["sha256"] = sha256_file(Path(cfg.csv))
        fingerprint["raw_counts"] = label_counts(table.values, cfg.labels)
        rest = np.arange(len(full))
        test = None
        if cfg.test_csv is not None:
            test, test_table = chexpert_split("test", Path(cfg.test_csv), cfg)
            test = eval_view(test, test_table.values, cfg, test_table.blank)
            fingerprint["test_sha256"] = sha256_file(Path(cfg.test_csv))
            fingerprint["test_source"] = "test_csv"
            shared = set(test.frame["patient"]) & set(table.frame["patient"])
            fingerprint["test_patients_in_train"] = len(shared)
            if shared:
                log.warning(
                    "%d patients of %s are also in %s: the test split is not held out for them.",
                    len(shared),
                    cfg.test_csv,
                    cfg.csv,
                )
        elif cfg.test_fraction > 0:
            rest, test_idx = split_by_patient(table.frame["patient"], cfg.test_fraction, cfg.test_seed)
            test = eval_view(_rows("test", full, table, test_idx), table.values[test_idx], cfg, table.blank)
            fingerprint["test_source"] = (
                f"carved from csv by patient: fraction {cfg.test_fraction}, seed {cfg.test_seed}"
            )
        train_idx, val_idx = split_by_patient(
            table.frame["patient"].iloc[rest].reset_index(drop=True), cfg.val_fraction, config.seed
        )
        train = _rows("train", full, table, rest[train_idx])
        val = eval_view(_rows("val", full, table, rest[val_idx]), table.values[rest[val_idx]], cfg, table.blank)
        splits = Splits(cfg.labels, train, val, test)
        fingerprint["patients"] = {
            s.name: int(s.frame["patient"].nunique()) for s in (train, val, test) if s is not None
        }
        prepared = manifest_version(cfg.csv)  # images from `chexops data prepare`: their manifest's version
        if prepared:
            fingerprint.update(prepared)
    fingerprint["rows"] = {s.name: len(s) for s in (splits.train, splits.val, splits.test) if s is not None}
    fingerprint["policy_counts"] = {
        s.name: policy_counts(s.targets, s.mask, cfg.labels)
        for s in (splits.train, splits.val, splits.test)
        if s is not None
    }
    basis = json.dumps(
        {
            k: fingerprint.get(k)
            for k in ("sha256", "view", "policy", "rows", "test_sha256", "test_source", "prepared_data_version")
        },
        sort_keys=True,
    )
    fingerprint["data_version"] = hashlib.sha256(basis.encode()).hexdigest()[:12]
    fingerprint["split_versions"] = {
        s.name: split_version(s, fingerprint["sha256"])
        for s in (splits.train, splits.val, splits.test)
        if s is not None
    }
    splits.fingerprint = fingerprint
    for s in (splits.train, splits.val, splits.test):
        if s is not None and len(s) == 0:
            raise DataError(f"the {s.name} split is empty; check the data and data.val_fraction.")
    from chexops.data.sources import (
        add_sources,
    )  # data.sources: feedback and other extra sources, weighted, with a hold-out

    return add_sources(splits, config)
