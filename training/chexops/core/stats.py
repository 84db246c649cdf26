"""The percentile bootstrap, once: resample whole groups (patients, studies), apply a statistic, read the
interval off the percentiles. numpy only.

    groups = Groups(patient_of_each_row)              # or Groups.rows(n): every row its own group
    values = bootstrap(statistic, groups, 1000, rng)  # statistic(rows) on 1000 resamples
    low, high = percentile_interval(values)           # the central 95%, NaN (no value) ignored

A resample draws as many groups as there are, with replacement, each bringing all its rows: rows of one
patient are correlated, and resampling rows would make the interval too narrow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class Groups:
    """Rows grouped by a key: the unit a bootstrap resamples. Groups are ordered by key, a group's rows by index."""

    def __init__(self, keys: np.ndarray):
        keys = np.asarray(keys)
        self.n_rows = len(keys)
        self.order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(keys[self.order][1:] != keys[self.order][:-1]) + 1
        self.starts = np.concatenate([[0], bounds]).astype(np.int64) if self.n_rows else np.zeros(0, np.int64)
        self.sizes = np.diff(np.append(self.starts, self.n_rows))

    @classmethod
    def rows(cls, n: int) -> Groups:
        """Every row its own group."""
        return cls(np.arange(n))

    def __len__(self) -> int:
        return len(self.starts)

    def members(self) -> list[np.ndarray]:
        """Each group's rows."""
        return [self.order[s : s + k] for s, k in zip(self.starts, self.sizes)]

    def resample(self, rng: np.random.Generator) -> np.ndarray:
        """The rows of one resample: `len(self)` groups drawn with replacement, each with all its rows."""
        drawn = rng.integers(0, len(self), len(self))
        sizes = self.sizes[drawn]
        # Position of each output row inside `order`: its group's start plus its rank within the group.
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return self.order[np.repeat(self.starts[drawn], sizes) + within]


def bootstrap(
    statistic: Callable[[np.ndarray], float | np.ndarray], groups: Groups, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """`statistic(rows)` on `n_boot` resamples of `groups`, one after another from `rng`: shape (n_boot, ...)."""
    return np.array([statistic(groups.resample(rng)) for _ in range(n_boot)], dtype=float)


def percentile_interval(samples: np.ndarray, level: float = 0.95, min_count: int = 1) -> tuple[float, float] | None:
    """The central `level` interval of `samples` (NaN ignored) by percentiles; None with fewer than
    `min_count` (at least 1) samples that are numbers."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if len(samples) < max(1, min_count):
        return None
    tail = round(50 * (1 - level), 10)  # 2.5 for 0.95, exactly
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)
