"""The synthetic CheXpert generator: layout, label rates, determinism, learnable images, refusals."""

from __future__ import annotations

import csv
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chexops.core.errors import UserInputError
from chexops.core.labels import CHEXPERT_LABELS, COMPETITION_LABELS, META_COLUMNS
from chexops.data import synth
from chexops.data.chexpert import DATASET_DIR
from chexops.data.synth import SynthSummary, synthesize
from chexops.data.synth.labels import load_stats
from chexops.data.synth.render import render_example_grid

STATS = load_stats()
TRAIN_VALUES = {"1.0", "0.0", "-1.0", ""}
PATH_RE = re.compile(rf"^{DATASET_DIR}/(train|valid)/patient(\d{{5}})/study(\d+)/view(\d+)_(frontal|lateral)\.jpg$")


def read(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, SynthSummary, float]:
    """The dataset root, the summary, and the wall time synthesize took."""
    out = tmp_path_factory.mktemp("small")
    started = time.perf_counter()
    summary = synthesize(out, patients=12, valid_patients=5, image_size=32, seed=3, progress=False)
    return out, summary, time.perf_counter() - started


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> SynthSummary:
    """CSV only, enough rows to compare rates with the real statistics."""
    out = tmp_path_factory.mktemp("medium")
    return synthesize(out, patients=3000, valid_patients=1000, seed=11, images=False, progress=False)


def test_layout_columns_and_images(small):
    out, summary, wall = small
    assert sorted(p.name for p in out.iterdir()) == [DATASET_DIR]  # no temporary leftovers
    root = out / DATASET_DIR
    assert summary.root == str(out)
    assert summary.train_csv == str(root / "train.csv") and summary.valid_csv == str(root / "valid.csv")
    assert (summary.patients, summary.valid_patients, summary.image_size, summary.seed) == (12, 5, 32, 3)
    assert 0 < summary.seconds <= round(wall, 3) + 0.001  # the run's own duration, in seconds
    for split, n_patients in (("train", 12), ("valid", 5)):
        columns, rows = read(root / f"{split}.csv")
        assert columns == STATS["columns"] == list(META_COLUMNS + CHEXPERT_LABELS)
        assert len(rows) == getattr(summary, f"{split}_rows") >= n_patients
        patients = set()
        for row in rows:
            m = PATH_RE.match(row["Path"])
            assert m and m.group(1) == split, row["Path"]
            patients.add(int(m.group(2)))
            assert row["Frontal/Lateral"] == m.group(5).capitalize()
            with Image.open(out / row["Path"]) as im:
                assert (im.format, im.mode, im.size) == ("JPEG", "L", (32, 32))
        assert len(patients) == n_patients
        if split == "valid":  # the real valid set: one study per patient
            assert {PATH_RE.match(r["Path"]).group(3) for r in rows} == {"1"}
    assert read(root / "train.csv")[1][0]["Path"] == f"{DATASET_DIR}/train/patient00001/study1/view1_frontal.jpg"


def test_patients_disjoint_and_valid_ids_continue(small):
    out, _, _ = small
    ids = {
        s: {int(PATH_RE.match(r["Path"]).group(2)) for r in read(out / DATASET_DIR / f"{s}.csv")[1]}
        for s in ("train", "valid")
    }
    assert not ids["train"] & ids["valid"]
    assert ids["train"] == set(range(1, 13)) and ids["valid"] == set(range(13, 18))


def test_value_sets(medium):
    _, train = read(medium.train_csv)
    _, valid = read(medium.valid_csv)
    for row in train:
        assert {row[label] for label in CHEXPERT_LABELS} <= TRAIN_VALUES
        assert row["No Finding"] in {"1.0", ""}
    for row in valid:
        assert {row[label] for label in CHEXPERT_LABELS} <= {"1.0", "0.0"}
    for row in train + valid:
        assert row["Sex"] in {"Male", "Female"}
        assert 18 <= int(row["Age"]) <= 90
        if row["Frontal/Lateral"] == "Frontal":
            assert row["AP/PA"] in {"AP", "PA"}
        else:
            assert row["Frontal/Lateral"] == "Lateral" and row["AP/PA"] == ""
    # No Finding is positive exactly when no pathology (Support Devices aside) is present.
    pathology = [label for label in CHEXPERT_LABELS if label not in ("No Finding", "Support Devices")]
    for row in valid:
        assert (row["No Finding"] == "1.0") == all(row[label] == "0.0" for label in pathology)


def test_rates_match_the_real_statistics(medium):
    _, train = read(medium.train_csv)
    _, valid = read(medium.valid_csv)
    n = len(train)
    studies = len({r["Path"].rsplit("/", 1)[0] for r in train})
    assert 3.0 < n / 3000 < 3.95  # real: 223414 / 64540 = 3.46 images per patient
    for label, counts in STATS["labels"].items():
        total = sum(counts.values())
        for key, value in (("positive", "1.0"), ("negative", "0.0"), ("uncertain", "-1.0"), ("blank", "")):
            real = counts[key] / total
            got = sum(r[label] == value for r in train) / n
            # Labels are drawn per study and shared in part by a patient's studies: a generous binomial band.
            tol = 0.006 + 5 * math.sqrt(real * (1 - real) / studies)
            if label == "No Finding":
                tol = 0.04  # derived from the latent findings, not drawn to a rate (measured 0.12 vs 0.10)
            assert abs(got - real) <= tol, (label, key, got, real)
        if label != "No Finding":  # valid shows the latent truth: prevalence (positive + uncertain / 2) / rows
            latent = (counts["positive"] + 0.5 * counts["uncertain"]) / total
            got = sum(r[label] == "1.0" for r in valid) / len(valid)
            assert abs(got - latent) <= 0.01 + 4 * math.sqrt(latent * (1 - latent) / len(valid)), (label, got, latent)

    frontal = [r for r in train if r["Frontal/Lateral"] == "Frontal"]
    assert abs(1 - len(frontal) / n - 32387 / 223414) < 0.02
    assert abs(sum(r["AP/PA"] == "AP" for r in frontal) / len(frontal) - 161590 / 191010) < 0.03
    assert abs(sum(r["Sex"] == "Male" for r in train) / n - 132636 / 223413) < 0.04
    assert abs(np.median([int(r["Age"]) for r in train]) - 62) <= 4

    # Positive labels correlate like the real ones.
    positive = {label: np.array([r[label] == "1.0" for r in train], float) for label in CHEXPERT_LABELS}
    for a, b in (("Cardiomegaly", "Edema"), ("Lung Opacity", "Pleural Effusion"), ("No Finding", "Lung Opacity")):
        real = STATS["positive_correlation"][a][b]
        assert abs(np.corrcoef(positive[a], positive[b])[0, 1] - real) < 0.06, (a, b)


def test_deterministic_for_a_seed(tmp_path, small):
    out, _, _ = small
    again = synthesize(tmp_path / "a", patients=12, valid_patients=5, image_size=32, seed=3, progress=True)
    other = synthesize(tmp_path / "b", patients=12, valid_patients=5, image_size=32, seed=4, progress=False)
    synthesize(tmp_path / "c", patients=12, valid_patients=5, image_size=32, seed=3, images=False, progress=False)
    for name in ("train.csv", "valid.csv"):
        first = (out / DATASET_DIR / name).read_bytes()
        assert (tmp_path / "a" / DATASET_DIR / name).read_bytes() == first
        assert (tmp_path / "c" / DATASET_DIR / name).read_bytes() == first  # images do not consume CSV randomness
        assert (tmp_path / "b" / DATASET_DIR / name).read_bytes() != first
    assert not (tmp_path / "c" / DATASET_DIR / "train").exists()
    rows = read(out / DATASET_DIR / "train.csv")[1][:5] + read(out / DATASET_DIR / "valid.csv")[1][:2]
    for row in rows:
        assert (tmp_path / "a" / row["Path"]).read_bytes() == (out / row["Path"]).read_bytes()
    other_rows = read(other.train_csv)[1][:3]
    assert all(
        (tmp_path / "b" / r["Path"]).read_bytes() != (out / r["Path"]).read_bytes()
        for r in other_rows
        if (out / r["Path"]).exists()
    )
    assert again.train_rows == len(read(again.train_csv)[1])


def _features(root: Path, rows: list[dict[str, str]]) -> np.ndarray:
    """Pixels averaged over 4x4 blocks: 96 px -> 24 x 24 features."""
    return np.stack(
        [
            np.asarray(Image.open(root / r["Path"]), np.float32).reshape(24, 4, 24, 4).mean(axis=(1, 3)).ravel() / 255
            for r in rows
        ]
    )


@pytest.mark.slow
def test_traces_are_learnable_and_the_check_can_fail(tmp_path):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    summary = synthesize(tmp_path, patients=600, valid_patients=300, image_size=96, seed=0, progress=False)
    train = [r for r in read(summary.train_csv)[1] if r["Frontal/Lateral"] == "Frontal"]
    valid = [r for r in read(summary.valid_csv)[1] if r["Frontal/Lateral"] == "Frontal"]
    pca = PCA(64, whiten=True, random_state=0).fit(_features(tmp_path, train))
    x_train, x_valid = pca.transform(_features(tmp_path, train)), pca.transform(_features(tmp_path, valid))
    aucs, shuffled = {}, {}
    for label in COMPETITION_LABELS:
        keep = np.array([r[label] != "-1.0" for r in train])  # blank and 0.0 are negatives
        y = np.array([r[label] == "1.0" for r in train])[keep]
        truth = np.array([r[label] == "1.0" for r in valid])

        def auroc(labels: np.ndarray, keep=keep, truth=truth) -> float:
            clf = LogisticRegression(C=1.0, max_iter=1000).fit(x_train[keep], labels)
            return roc_auc_score(truth, clf.predict_proba(x_valid)[:, 1])

        aucs[label] = auroc(y)
        # Shuffled labels: the same classifier, no signal. Averaged over permutations, since a random
        # direction can still correlate with a strong trace.
        shuffled[label] = np.mean([auroc(np.random.default_rng(k).permutation(y)) for k in range(5)])
    # Measured at seed 0: Atelectasis 0.86, Cardiomegaly 0.98, Consolidation 0.85, Edema 0.98, Effusion 1.00.
    assert min(aucs.values()) >= 0.75, aucs
    assert np.mean(list(aucs.values())) >= 0.85, aucs
    assert max(shuffled.values()) < 0.65, shuffled
    assert 0.4 < np.mean(list(shuffled.values())) < 0.6, shuffled


def test_refuses_an_existing_dataset_unless_overwrite(tmp_path):
    target = tmp_path / DATASET_DIR
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    with pytest.raises(UserInputError, match="already exists"):
        synthesize(tmp_path, patients=2, valid_patients=1, image_size=16, progress=False)
    assert (target / "mine.txt").read_text() == "keep me"
    summary = synthesize(tmp_path, patients=2, valid_patients=1, image_size=16, progress=False, overwrite=True)
    assert not (target / "mine.txt").exists() and Path(summary.train_csv).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [DATASET_DIR]


def test_an_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_write_images", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path, patients=2, valid_patients=1, image_size=16, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patients": 0}, "patients"),
        ({"patients": -3}, "patients"),
        ({"patients": 2.5}, "patients"),
        ({"patients": True}, "patients"),
        ({"patients": 99_999}, "at most"),
        ({"valid_patients": 0}, "valid_patients"),
        ({"image_size": 8}, "image_size"),
        ({"image_size": 2048}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"stats": {"columns": ["Path"]}}, "columns"),
        ({"stats": {"columns": STATS["columns"], "labels": {}}}, "malformed"),
        ({"stats": "label_stats.json"}, "stats"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(UserInputError, match=message):
        synthesize(tmp_path / "out", **{"progress": False, **kwargs})
    assert not (tmp_path / "out").exists()


def test_refuses_a_file_as_root(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserInputError, match="not a directory"):
        synthesize(tmp_path / "file", patients=1, valid_patients=1, progress=False)


def test_example_grid():
    grid = render_example_grid(image_size=32, per_finding=2)
    assert grid.shape == (32 * len(CHEXPERT_LABELS), 64) and grid.dtype == np.uint8
