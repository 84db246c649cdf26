"""Extra CheXpert-layout sources joining a training run (`data.sources`), e.g. `chexops feedback export`.

    data:
      csv: .../CheXpert-v1.0-small/train.csv
      sources:
        - name: feedback
          csv: .../feedback-export/CheXpert-v1.0-small/train.csv
          weight: 2.0            # each row counts twice in the training set (rows repeated: 2.5 → 2 or 3 times)
          holdout_fraction: 0.2  # the newest 20 % of its rows never train: the feedback hold-out
          allow_empty: true      # no rows (yet), or none of the configured view: the source adds nothing

Rows of a source are in time order (`chexops feedback export` writes the oldest first), so the
hold-out is the newest tail: a model is judged on feedback that came after the feedback it learned
from. Its labels follow the CSV's own policy file (a feedback export's blanks are ignored, not
negative). The data version covers every source (its file hash, weight and hold-out share): adding
feedback makes a new data version; an empty source (`allow_empty`, e.g. the scheduled retraining's
export before any clinic sent feedback) is logged and left out of it. `holdout_splits(config)` gives
the hold-outs for evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from chexops.config import Config, DataConfig, ExtraSource
    from chexops.data.splits import Split, Splits

log = logging.getLogger(__name__)


def _empty(source: ExtraSource, cfg: "DataConfig") -> bool:
    """True when an `allow_empty` source has no row of the configured view (a missing or broken CSV still fails)."""
    from chexops.data.chexpert import filter_view, read_chexpert_csv

    if not source.allow_empty:
        return False
    try:
        if pd.read_csv(source.csv, dtype=str, nrows=1).empty:
            return True
    except (OSError, ValueError, UnicodeDecodeError):  # read_chexpert_csv below names the problem
        pass
    return len(filter_view(read_chexpert_csv(source.csv, cfg.labels), cfg.view)) == 0


def _parts(source: ExtraSource, cfg: "DataConfig") -> tuple["Split", "Split | None"]:
    """The source's (training part, newest-rows hold-out) after the view filter and bad-image check."""
    from chexops.data.splits import Split, chexpert_split, eval_view

    whole, table = chexpert_split(f"source:{source.name}", source.csv, cfg.model_copy(update={"root": source.root}))
    n_hold = int(round(len(whole) * source.holdout_fraction))
    cut = len(whole) - n_hold
    train = Split(
        whole.name,
        whole.targets[:cut],
        whole.mask[:cut],
        whole.paths[:cut],
        frame=whole.frame.iloc[:cut].reset_index(drop=True),
    )
    if not n_hold:
        return train, None
    hold = Split(
        f"holdout:{source.name}",
        whole.targets[cut:],
        whole.mask[cut:],
        whole.paths[cut:],
        frame=whole.frame.iloc[cut:].reset_index(drop=True),
    )
    return train, eval_view(hold, table.values[cut:], cfg, table.blank)


def _repeats(n: int, weight: float, seed: int) -> np.ndarray:
    """Row indices with each row `weight` times on average (the fractional part drawn, deterministically)."""
    whole = int(weight)
    extra = np.random.default_rng(seed).random(n) < weight - whole
    return np.concatenate([np.tile(np.arange(n), whole), np.flatnonzero(extra)]).astype(int)


def add_sources(splits: "Splits", config: "Config") -> "Splits":
    """`splits` with every configured source's training part appended to its train split (weighted), and a
    data version that covers the sources. Without sources, `splits` unchanged."""
    from chexops.core.files import sha256_file
    from chexops.data.splits import Split

    sources = config.data.sources
    if not sources:
        return splits
    if splits.train.paths is None:
        from chexops.core.errors import DataError

        raise DataError("data.sources join CheXpert-layout training data only (data.kind: chexpert).")
    train = splits.train
    described = []
    for k, source in enumerate(sources):
        if _empty(source, config.data):
            log.warning(
                "Source %s (%s) has no rows of view %r: it adds nothing to this run.",
                source.name,
                source.csv,
                config.data.view,
            )
            continue
        part, hold = _parts(source, config.data)
        rows = _repeats(len(part), source.weight, config.seed + k)
        train = Split(
            "train",
            np.concatenate([train.targets, part.targets[rows]]),
            np.concatenate([train.mask, part.mask[rows]]),
            [*train.paths, *(part.paths[i] for i in rows)],
            frame=pd.concat([train.frame, part.frame.iloc[rows]], ignore_index=True),
        )
        described.append(
            {
                "name": source.name,
                "sha256": sha256_file(source.csv),
                "weight": source.weight,
                "holdout_fraction": source.holdout_fraction,
                "rows": len(part),
                "holdout_rows": len(hold) if hold is not None else 0,
            }
        )
    if not described:
        return splits
    splits.train = train
    fp = splits.fingerprint
    fp["sources"] = described
    fp["rows"]["train"] = len(train)
    basis = json.dumps({"base": fp["data_version"], "sources": described}, sort_keys=True)
    fp["data_version"] = hashlib.sha256(basis.encode()).hexdigest()[:12]
    return splits


def holdout_splits(config: "Config") -> dict[str, "Split"]:
    """The newest-rows hold-out of each source (by name) for evaluation; empty without sources."""
    held = {}
    for source in config.data.sources:
        if _empty(source, config.data):
            continue
        _, hold = _parts(source, config.data)
        if hold is not None:
            held[source.name] = hold
    return held
