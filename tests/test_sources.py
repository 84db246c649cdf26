"""Extra training sources (`data.sources`, chexops.data.sources): weighted rows, the newest rows held out, and a data
version that covers every source."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml

from chexops.config import load_config
from chexops.core.errors import ConfigError, DataError
from chexops.data.loading import load_splits
from chexops.data.sources import holdout_splits


def config(tmp_path, data, *sources: dict):
    path = tmp_path / f"c{len(list(tmp_path.glob('c*.yaml')))}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "sources",
                "data": {
                    "csv": str(data / "train.csv"),
                    "root": str(data.parent),
                    "view": "all",
                    "sources": list(sources),
                },
                "preprocess": {"size": 32},
                "model": {"name": "small", "width": 8},
            }
        )
    )
    return load_config(path)


def test_sources_join_training_weighted_with_their_newest_rows_held_out(clinic_data, tmp_path):
    base = load_splits(config(tmp_path, clinic_data))
    source = {
        "name": "feedback",
        "csv": str(clinic_data / "valid.csv"),
        "root": str(clinic_data.parent),
        "weight": 2,
        "holdout_fraction": 0.25,
    }
    cfg = config(tmp_path, clinic_data, source)
    joined = load_splits(cfg)
    n = len(pd.read_csv(clinic_data / "valid.csv"))
    hold = holdout_splits(cfg)["feedback"]
    assert len(hold) == round(n * 0.25)
    assert len(joined.train) == len(base.train) + 2 * (n - len(hold))
    assert len(joined.val) == len(base.val)  # the base validation split is untouched
    assert not set(map(str, hold.paths)) & set(map(str, joined.train.paths))  # hold-out rows never train
    assert list(hold.frame["csv_row"]) == list(range(n - len(hold) + 1, n + 1))  # the newest rows (export order)
    assert joined.fingerprint["data_version"] != base.fingerprint["data_version"]
    assert joined.fingerprint["sources"][0]["rows"] == n - len(hold)

    fractional = load_splits(config(tmp_path, clinic_data, {**source, "weight": 1.5}))
    assert len(base.train) + (n - len(hold)) < len(fractional.train) < len(base.train) + 2 * (n - len(hold))
    again = load_splits(config(tmp_path, clinic_data, {**source, "weight": 1.5}))
    assert (
        len(again.train) == len(fractional.train)
        and again.fingerprint["data_version"] == fractional.fingerprint["data_version"]
    )


def test_new_feedback_is_a_new_data_version(clinic_data, tmp_path):
    copy = tmp_path / "fb"
    shutil.copytree(clinic_data, copy / clinic_data.name)
    source = {"name": "feedback", "csv": str(copy / clinic_data.name / "valid.csv"), "root": str(copy)}
    before = load_splits(config(tmp_path, clinic_data, source)).fingerprint["data_version"]
    csv = copy / clinic_data.name / "valid.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([*lines, lines[1]]) + "\n")  # one more feedback row
    after = load_splits(config(tmp_path, clinic_data, source)).fingerprint["data_version"]
    assert before != after


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "x", "csv": "a.csv", "wieght": 2},
        {"name": "x", "csv": "a.csv", "weight": 0},
        {"name": "x y", "csv": "a.csv"},
        {"name": "x", "csv": "a.csv", "holdout_fraction": 1},
    ],
)
def test_bad_sources_are_config_errors(clinic_data, tmp_path, bad):
    with pytest.raises(ConfigError, match="sources"):
        config(tmp_path, clinic_data, bad)


def test_an_empty_source_fails_unless_allowed_and_a_missing_one_always(clinic_data, tmp_path):
    """`allow_empty`: a CSV with a header and no rows (a feedback export before any feedback) adds nothing;
    without it that is an error, and a missing CSV is an error either way."""
    empty = tmp_path / "empty.csv"
    empty.write_text((clinic_data / "valid.csv").read_text().splitlines()[0] + "\n")
    source = {"name": "feedback", "csv": str(empty), "root": str(clinic_data.parent)}
    base = load_splits(config(tmp_path, clinic_data))
    joined = load_splits(config(tmp_path, clinic_data, {**source, "allow_empty": True}))
    assert (
        len(joined.train) == len(base.train) and joined.fingerprint["data_version"] == base.fingerprint["data_version"]
    )
    assert holdout_splits(config(tmp_path, clinic_data, {**source, "allow_empty": True})) == {}
    with pytest.raises(DataError, match="no rows"):
        load_splits(config(tmp_path, clinic_data, source))
    with pytest.raises(DataError, match="does not exist"):
        load_splits(
            config(tmp_path, clinic_data, {**source, "csv": str(tmp_path / "missing.csv"), "allow_empty": True})
        )
