"""The CheXpert CSV reader: validation errors, policies, views, patient splits, image checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from chexops.config import PolicyConfig, load_config
from chexops.core.labels import CHEXPERT_LABELS
from chexops.data.chexpert import apply_policy, filter_view, image_paths, read_chexpert_csv, split_by_patient
from chexops.data.loading import load_splits
from support import make_rows, run_cli, write_chexpert

LABELS = list(CHEXPERT_LABELS)


def test_reads_values_patients_and_studies(tmp_path):
    csv = write_chexpert(tmp_path, make_rows(), images=False)
    table = read_chexpert_csv(csv, LABELS)
    assert len(table) == 13
    assert table.frame["patient"].nunique() == 6
    assert set(np.unique(table.values[~np.isnan(table.values)])) == {1.0, 0.0, -1.0}
    assert np.isnan(table.values).sum() > 0
    assert table.frame["Age"].iloc[0] == 41.0


def test_policies_per_label_and_blank():
    values = np.array([[1.0, -1.0, np.nan], [0.0, -1.0, -1.0]], dtype=np.float32)
    labels = ["Atelectasis", "Cardiomegaly", "Edema"]
    t, m = apply_policy(values, labels, PolicyConfig())  # U-Ones for Atelectasis and Edema, U-Zeros else
    assert t.tolist() == [[1, 0, 0], [0, 0, 1]] and m.min() == 1
    t, m = apply_policy(values, labels, PolicyConfig(uncertain="ignore", uncertain_per_label={}, blank="ignore"))
    assert m.tolist() == [[1, 0, 0], [1, 0, 0]]
    t, m = apply_policy(values, labels, PolicyConfig(uncertain="ones", uncertain_per_label={"Edema": "zeros"}))
    assert t.tolist() == [[1, 1, 0], [0, 1, 0]]


@pytest.mark.parametrize("setting", ["ignore", "ones", "zeros"])
def test_the_policy_a_user_sets_applies_to_every_label(tmp_path, setting):
    csv = write_chexpert(tmp_path, make_rows(), images=False)
    config = load_config(None, [f"data.csv={csv}", f"data.policy.uncertain={setting}"])
    assert config.data.policy.uncertain_per_label == {}
    values = np.full((1, 3), -1.0, np.float32)
    targets, mask = apply_policy(values, ["Atelectasis", "Cardiomegaly", "Edema"], config.data.policy)
    assert mask.tolist() == [[float(setting != "ignore")] * 3]
    assert targets.tolist() == [[float(setting == "ones")] * 3]
    explicit = load_config(
        None, [f"data.csv={csv}", "data.policy.uncertain=ignore", "data.policy.uncertain_per_label={Edema: ones}"]
    )
    assert apply_policy(values, ["Atelectasis", "Cardiomegaly", "Edema"], explicit.data.policy)[1].tolist() == [
        [0.0, 0.0, 1.0]
    ]
    assert load_config(None, [f"data.csv={csv}"]).data.policy.uncertain_per_label == {
        "Atelectasis": "ones",
        "Edema": "ones",
    }


def test_view_filter(tmp_path):
    table = read_chexpert_csv(write_chexpert(tmp_path, make_rows(), images=False), LABELS)
    assert len(filter_view(table, "all")) == 13
    assert len(filter_view(table, "frontal")) == 12
    assert len(filter_view(table, "ap")) == 6 and len(filter_view(table, "pa")) == 6


def test_patient_split_is_disjoint_and_deterministic():
    patients = pd.Series([f"patient{i // 3:05d}" for i in range(300)])
    tr, va = split_by_patient(patients, 0.2, seed=1)
    assert set(patients[tr]).isdisjoint(set(patients[va]))
    assert len(tr) + len(va) == 300 and 15 <= patients[va].nunique() <= 25
    tr2, va2 = split_by_patient(patients, 0.2, seed=1)
    assert np.array_equal(va, va2)
    _, va3 = split_by_patient(patients, 0.2, seed=2)
    assert not np.array_equal(va, va3)


def test_image_paths_accept_root_or_dataset_folder(tmp_path):
    csv = write_chexpert(tmp_path, make_rows(2, 1))
    table = read_chexpert_csv(csv, LABELS)
    assert all(p.exists() for p in image_paths(table, tmp_path))
    assert all(p.exists() for p in image_paths(table, tmp_path / "CheXpert-v1.0-small"))
    assert all(p.exists() for p in image_paths(table))


BAD_CASES = [
    (
        "missing column",
        lambda rows: [{k: v for k, v in r.items() if k != "Edema"} for r in rows],
        "missing column 'Edema'",
        None,
    ),
    (
        "label value",
        lambda rows: [{**r, "Cardiomegaly": "2.0"} if i == 4 else r for i, r in enumerate(rows)],
        "row 5 (line 6), column 'Cardiomegaly'",
        "2.0",
    ),
    (
        "age",
        lambda rows: [{**r, "Age": "forty"} if i == 2 else r for i, r in enumerate(rows)],
        "row 3 (line 4), column 'Age'",
        "forty",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("case,mutate,where,value", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_malformed_csv_is_a_clear_error_and_writes_nothing(tmp_path, home, case, mutate, where, value):
    rows = mutate(make_rows())
    csv = write_chexpert(tmp_path, rows)
    if case == "missing column":  # DictWriter wrote an empty column: drop it for real
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False).drop(columns=["Edema"])
        frame.to_csv(csv, index=False)
    for args in (
        ["train", "--config", "configs/demo.yaml", f"data.csv={csv}", f"data.root={tmp_path}", "data.test_csv=null"],
        ["data", "stats", str(csv)],
    ):
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        assert where in result.stderr
        if value:
            assert repr(value) in result.stderr
        assert "Traceback" not in result.stderr
    assert not (home / "mlflow.db").exists() and not (home / "checkpoints").exists()


@pytest.mark.slow
def test_missing_and_unreadable_images_are_named_and_counted(tmp_path, home):
    rows = make_rows()
    csv = write_chexpert(tmp_path, rows)
    (tmp_path / rows[1]["Path"]).unlink()
    (tmp_path / rows[2]["Path"]).write_bytes(b"not a jpeg at all")
    result = run_cli(
        "train", "--config", "configs/demo.yaml", f"data.csv={csv}", f"data.root={tmp_path}", "data.test_csv=null"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "1 missing (row 2:" in result.stderr and "1 unreadable (row 3:" in result.stderr
    assert "data.skip_bad_images" in result.stderr
    assert not (home / "mlflow.db").exists()

    stats = json.loads(run_cli("data", "stats", str(csv), "--root", str(tmp_path), "--json").stdout)
    assert stats["images"]["missing"] == 1 and stats["images"]["unreadable"] == 1

    config = load_config(
        "configs/demo.yaml",
        [
            f"data.csv={csv}",
            f"data.root={tmp_path}",
            "data.test_csv=null",
            "data.skip_bad_images=true",
            "data.val_fraction=0.3",
        ],
    )
    splits = load_splits(config)
    assert len(splits.train) + len(splits.val) == 12 - 2


@pytest.mark.slow
def test_stats_counts_before_and_after_policy(tmp_path):
    csv = write_chexpert(tmp_path, make_rows(), images=False)
    result = run_cli("data", "stats", str(csv), "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["rows"], stats["patients"], stats["studies"]) == (13, 6, 12)
    assert stats["views"]["frontal_lateral"] == {"Frontal": 12, "Lateral": 1}
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    for label in ("Edema", "Cardiomegaly"):
        raw, after = stats["labels"][label]["raw"], stats["labels"][label]["after_policy"]
        assert raw["positive"] == (frame[label] == "1.0").sum() and raw["blank"] == (frame[label] == "").sum()
        assert sum(raw.values()) == 13 and after["ignored"] == 0
    # U-Ones for Edema, U-Zeros for Cardiomegaly (the LibAUC default)
    assert (
        stats["labels"]["Edema"]["after_policy"]["positive"]
        == stats["labels"]["Edema"]["raw"]["positive"] + stats["labels"]["Edema"]["raw"]["uncertain"]
    )
    assert (
        stats["labels"]["Cardiomegaly"]["after_policy"]["positive"]
        == stats["labels"]["Cardiomegaly"]["raw"]["positive"]
    )
    human = run_cli("data", "stats", str(csv))
    assert "13 rows, 6 patients, 12 studies" in human.stdout


@pytest.mark.slow
def test_unreadable_csv_and_missing_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\xff\xfe\x00garbage\x00\n\x01")
    for target in (bad, tmp_path / "absent.csv"):
        result = run_cli("data", "stats", str(target))
        assert result.returncode == 2 and "Traceback" not in result.stderr and str(target) in result.stderr


@pytest.mark.slow
def test_config_errors_are_clear(tmp_path):
    result = run_cli("train", "--config", "configs/demo.yaml", "train.lr=fast", "model.colour=blue")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.lr" in result.stderr and "model.colour" in result.stderr
    result = run_cli("train", "--config", str(tmp_path / "none.yaml"))
    assert result.returncode == 2 and "cannot read config" in result.stderr
