"""The shared percentile bootstrap (`chexops.core.stats`): grouped resampling, intervals, coverage."""

from __future__ import annotations

import numpy as np
import pytest

from chexops.core.stats import Groups, bootstrap, percentile_interval


def test_groups_are_ordered_by_key_with_their_rows_in_order():
    groups = Groups(np.array([7, 3, 7, 5, 3, 7]))
    assert len(groups) == 3
    assert [m.tolist() for m in groups.members()] == [[1, 4], [3], [0, 2, 5]]
    assert [m.tolist() for m in Groups.rows(3).members()] == [[0], [1], [2]]


def test_a_resample_draws_as_many_whole_groups_as_there_are():
    keys = np.repeat(np.arange(30), np.arange(30) % 4 + 1)  # groups of 1 to 4 rows
    np.random.default_rng(0).shuffle(keys)
    groups = Groups(keys)
    members = {int(keys[m[0]]): m.tolist() for m in groups.members()}
    rng = np.random.default_rng(1)
    for _ in range(50):
        rows = groups.resample(rng).tolist()
        drawn = []
        while rows:  # the rows split, front to back, into whole groups
            group = members[int(keys[rows[0]])]
            assert rows[: len(group)] == group
            drawn.append(group)
            rows = rows[len(group) :]
        assert len(drawn) == len(groups)


def test_a_resample_of_single_rows_is_a_plain_bootstrap_draw():
    """Every row its own group: the resample is the generator's own draw of row indices, so the
    ungrouped bootstrap is the classic one and resampling patients with one image each changes nothing."""
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(3):
        assert Groups.rows(17).resample(a).tolist() == b.integers(0, 17, 17).tolist()
    values = np.random.default_rng(0).normal(size=40)
    mean = lambda rows: values[rows].mean()  # noqa: E731
    by_row = bootstrap(mean, Groups.rows(40), 50, np.random.default_rng(2))
    by_patient = bootstrap(mean, Groups(np.arange(40) * 3 + 1), 50, np.random.default_rng(2))
    assert by_row.tolist() == by_patient.tolist()


def test_percentile_interval_ignores_nan_and_needs_enough_samples():
    assert percentile_interval(np.arange(101.0)) == (2.5, 97.5)
    assert percentile_interval(np.arange(101.0), level=0.9) == (5.0, 95.0)
    with_nan = np.concatenate([np.arange(101.0), [np.nan] * 50])
    assert percentile_interval(with_nan) == (2.5, 97.5)
    assert percentile_interval(with_nan, min_count=102) is None
    assert percentile_interval(np.array([np.nan, np.nan])) is None


def test_the_interval_of_a_mean_covers_the_true_mean_about_95_percent_of_the_time():
    """Samples of 100 from a normal distribution with mean 1: the percentile interval of the mean holds 1
    in about 95% of 600 samples (a little less: the bootstrap's variance is the sample's, not the population's)."""
    rng = np.random.default_rng(0)
    trials, covered = 600, 0
    for _ in range(trials):
        sample = rng.normal(1.0, 2.0, 100)
        means = bootstrap(lambda rows, sample=sample: sample[rows].mean(), Groups.rows(100), 200, rng)
        low, high = percentile_interval(means)
        covered += low <= 1.0 <= high
    assert 0.92 <= covered / trials <= 0.97


def test_resampling_groups_widens_the_interval_of_correlated_rows():
    """40 patients with 10 identical rows each: resampling rows pretends there are 400 independent
    cases, about sqrt(10) times too narrow; resampling patients gives the width of 40 cases."""
    rng = np.random.default_rng(3)
    values = np.repeat(rng.normal(size=40), 10)
    patients = np.repeat(np.arange(40), 10)

    def width(groups: Groups) -> float:
        means = bootstrap(lambda rows: values[rows].mean(), groups, 400, np.random.default_rng(4))
        low, high = percentile_interval(means)
        return high - low

    assert width(Groups(patients)) / width(Groups.rows(len(values))) == pytest.approx(np.sqrt(10), rel=0.3)


def test_a_statistic_of_several_values_gives_one_row_per_resample():
    values = np.arange(10.0)
    out = bootstrap(
        lambda rows: np.array([values[rows].min(), values[rows].max()]), Groups.rows(10), 7, np.random.default_rng(0)
    )
    assert out.shape == (7, 2) and (out[:, 0] <= out[:, 1]).all()
