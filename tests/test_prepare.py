"""`chexops data prepare`: local and S3 (a real moto server), resume after SIGKILL, bad images, the manifest."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import ROOT, make_rows, moto_s3, run_cli, write_chexpert

pytestmark = pytest.mark.slow

SIZE = 48


def radiograph(seed: int, width: int = 200, height: int = 240) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 120 + 80 * np.sin(x / 17.0 + seed) * np.cos(y / 23.0) + rng.normal(0, 12, (height, width))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def make_source(root: Path, patients: int) -> Path:
    """A CheXpert-layout copy: train.csv and valid.csv, one JPEG per row, 200×240 px."""
    rows = make_rows(patients, 2)
    write_chexpert(root, rows, images=False)
    write_chexpert(root, rows[:4], name="valid.csv", images=False)
    for i, row in enumerate(rows):
        path = root / row["Path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        radiograph(i).save(path, quality=92)
    return root / "CheXpert-v1.0-small"


def prepare_json(*args: str, env: dict | None = None, code: int = 0) -> dict:
    result = run_cli("data", "prepare", *args, "--json", env=env)
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout) if code == 0 else {"stderr": result.stderr}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_source(tmp_path_factory.mktemp("source"), patients=20)


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference")
    summary = prepare_json("--source", str(source.parent), "--out", str(out), "--size", str(SIZE), "--workers", "2")
    return {
        "out": out,
        "summary": summary,
        "manifest": json.loads((out / "CheXpert-v1.0-small/manifest.json").read_text()),
    }


def test_local_to_local_resizes_writes_csvs_and_a_manifest(source, reference, tmp_path):
    summary, manifest, out = reference["summary"], reference["manifest"], reference["out"]
    assert summary["images"] == 41 and summary["prepared"] == 41 and summary["bad"] == 0
    assert summary["data_version"] == manifest["data_version"]
    assert len(manifest["files"]) == 41 and {c["path"] for c in manifest["csv"]} == {
        "CheXpert-v1.0-small/train.csv",
        "CheXpert-v1.0-small/valid.csv",
    }
    image = Image.open(out / manifest["files"][0]["path"])
    assert image.mode == "L" and min(image.size) == SIZE and image.size == (SIZE, 58)  # 200×240 → shorter side 48
    # the same grey and resize code as training: the prepared image is what preprocessing makes of the original
    from chexops.imaging.preprocessing import load_image, resize_grey, to_grey

    original = to_grey(load_image(source / manifest["files"][0]["path"].split("/", 1)[1]))
    expected = resize_grey(original, SIZE, 58)
    assert np.abs(np.asarray(image, np.float32) / 255 - expected).mean() < 0.02
    # idempotent: a second run does nothing and yields the same manifest
    again = prepare_json("--source", str(source), "--out", str(out), "--size", str(SIZE), "--workers", "1")
    assert again["skipped"] == 41 and again["prepared"] == 0 and again["data_version"] == summary["data_version"]
    # training reads it as it is and records the manifest's version
    from chexops.config import load_config
    from chexops.data.loading import load_splits

    splits = load_splits(
        load_config(None, [f"data.csv={out}/CheXpert-v1.0-small/train.csv", f"data.root={out}", "data.view=all"])
    )
    assert splits.fingerprint["prepared_data_version"] == summary["data_version"]


def test_bad_images_are_counted_named_and_judged_by_the_fraction(tmp_path):
    src = make_source(tmp_path / "src", patients=4)
    (src / "train/patient00002/study1/view1_frontal.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "train/patient00003/study2/view1_frontal.jpg").unlink()
    failed = prepare_json(
        "--source", str(src), "--out", str(tmp_path / "out"), "--size", str(SIZE), "--workers", "1", code=1
    )
    assert (
        "2 of 9 images" in failed["stderr"]
        and "patient00002/study1" in failed["stderr"]
        and "patient00003/study2" in failed["stderr"]
    )
    assert not (tmp_path / "out/CheXpert-v1.0-small/manifest.json").exists()
    ok = prepare_json(
        "--source",
        str(src),
        "--out",
        str(tmp_path / "out"),
        "--size",
        str(SIZE),
        "--workers",
        "1",
        "--max-bad-fraction",
        "0.3",
    )
    assert ok["bad"] == 2 and {f["reason"].split(" ")[0] for f in ok["failed"]} == {"missing", "unreadable"}
    assert ok["skipped"] == 7  # the good images of the failed run were kept
    csv_text = (tmp_path / "out/CheXpert-v1.0-small/train.csv").read_text()
    assert (
        "patient00002/study1/view1" not in csv_text
        and "patient00003/study2" not in csv_text
        and csv_text.count("\n") == 9 - 2 + 1 - 0
    )
    wrong = run_cli("data", "prepare", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2"), "--json")
    assert wrong.returncode == 2 and "is not a folder" in wrong.stderr


def test_sigkill_then_rerun_gives_the_uninterrupted_manifest(tmp_path, tmp_path_factory):
    src = make_source(tmp_path / "src", patients=90)  # 181 images
    ref = prepare_json("--source", str(src), "--out", str(tmp_path / "ref"), "--size", str(SIZE), "--workers", "1")
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chexops",
            "data",
            "prepare",
            "--source",
            str(src),
            "--out",
            str(out),
            "--size",
            str(SIZE),
            "--workers",
            "2",
            "--json",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not list((out / ".prepare").glob("part-*.jsonl")):
        assert proc.poll() is None and time.monotonic() < deadline, "prepare ended before its first journal part"
        time.sleep(0.02)
    workers = [
        int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    ]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "CheXpert-v1.0-small/manifest.json").exists()
    time.sleep(0.5)
    for pid in workers:  # the workers die with their parent
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    resumed = prepare_json("--source", str(src), "--out", str(out), "--size", str(SIZE), "--workers", "2")
    assert resumed["skipped"] >= 64 and resumed["prepared"] == 181 - resumed["skipped"]
    assert resumed["data_version"] == ref["data_version"]
    assert (out / "CheXpert-v1.0-small/manifest.json").read_bytes() == (
        tmp_path / "ref/CheXpert-v1.0-small/manifest.json"
    ).read_bytes()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3-compatible server (moto's server mode) with bucket `cxr`, for this module only."""
    with moto_s3(tmp_path_factory.mktemp("s3"), ["cxr"]) as server:
        yield server


def test_local_to_s3_and_s3_to_local_give_the_same_data_version(source, reference, s3, tmp_path):
    up = prepare_json(
        "--source", str(source), "--out", "s3://cxr/prepared", "--size", str(SIZE), "--workers", "2", env=s3["env"]
    )
    assert (
        up["data_version"] == reference["summary"]["data_version"]
        and up["manifest"] == "s3://cxr/prepared/CheXpert-v1.0-small/manifest.json"
    )
    keys = {
        o["Key"]
        for page in s3["client"].get_paginator("list_objects_v2").paginate(Bucket="cxr", Prefix="prepared/")
        for o in page.get("Contents", [])
    }
    assert {f"prepared/{f['path']}" for f in reference["manifest"]["files"]} <= keys
    again = prepare_json(
        "--source", str(source), "--out", "s3://cxr/prepared", "--size", str(SIZE), "--workers", "1", env=s3["env"]
    )
    assert again["skipped"] == 41  # resumable on S3 too: outputs checked against the journal
    # the original copy in the bucket, prepared back to a folder
    for path in sorted(source.rglob("*")):
        if path.is_file():
            s3["client"].upload_file(str(path), "cxr", f"raw/CheXpert-v1.0-small/{path.relative_to(source).as_posix()}")
    down = prepare_json(
        "--source",
        "s3://cxr/raw",
        "--out",
        str(tmp_path / "down"),
        "--size",
        str(SIZE),
        "--workers",
        "2",
        env=s3["env"],
    )
    assert down["data_version"] == reference["summary"]["data_version"] and down["images"] == 41
    missing = run_cli(
        "data", "prepare", "--source", "s3://no-such-bucket/x", "--out", str(tmp_path / "x"), "--json", env=s3["env"]
    )
    assert missing.returncode == 2 and "NoSuchBucket" in missing.stderr and "Traceback" not in missing.stderr
