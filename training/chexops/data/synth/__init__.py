"""A synthetic CheXpert-v1.0-small: the real layout, label rates and correlations; images with learnable traces.

`synthesize(out)` writes `out/CheXpert-v1.0-small/{train,valid}.csv` and the JPEGs they name: the labels are
drawn by `labels` (the real statistics, a latent correlation model), the images by `render` (every latent
finding leaves its own visual trace).
"""

from __future__ import annotations

import csv
import logging
import os
import secrets
import shutil
import time
from pathlib import Path

import numpy as np

from chexops.core.errors import UserInputError
from chexops.core.results import Result
from chexops.data.chexpert import DATASET_DIR
from chexops.data.synth.labels import DrawnSplit, draw_split, label_model, load_stats
from chexops.data.synth.render import render

log = logging.getLogger(__name__)

_MAX_PATIENTS = 99_999  # patient ids stay five digits, as in the real layout
_JPEG_QUALITY = 90
_BATCH_PIXELS = 1 << 21  # pixels rendered per vectorised batch


def _write_images(root: Path, split: DrawnSplit, seed: int, tag: int, size: int, bar) -> None:
    """Render a split in vectorised batches and write each image as JPEG under `root` (the dataset dir)."""
    from PIL import Image

    for d in sorted({str(Path(p).parent) for p in split.paths}):
        (root / Path(d).relative_to(DATASET_DIR)).mkdir(parents=True, exist_ok=True)
    batch = max(1, _BATCH_PIXELS // (size * size))
    for b, start in enumerate(range(0, len(split.paths), batch)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, tag, b]))
        stop = min(start + batch, len(split.paths))
        pixels = render(rng, split.findings[start:stop], split.frontal[start:stop], size)
        for path, arr in zip(split.paths[start:stop], pixels):
            Image.fromarray(arr).save(root / Path(path).relative_to(DATASET_DIR), format="JPEG", quality=_JPEG_QUALITY)
        bar.update(stop - start)


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserInputError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise UserInputError(f"{name} must be between {low} and {high}, got {value}")
    return int(value)


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)


class SynthSummary(Result):
    """What `synthesize` wrote: the dataset root, its two CSVs and their rows, the settings, the seconds it took."""

    root: str
    train_csv: str
    valid_csv: str
    train_rows: int
    valid_rows: int
    patients: int
    valid_patients: int
    image_size: int
    seed: int
    seconds: float


def synthesize(
    out: Path,
    *,
    patients: int = 800,
    valid_patients: int = 200,
    image_size: int = 96,
    seed: int = 0,
    stats: dict | None = None,
    progress: bool = True,
    overwrite: bool = False,
    images: bool = True,
) -> dict:
    """Write a synthetic CheXpert-v1.0-small under `out` (the dataset root); return a summary.

    The dataset is built in a hidden directory next to the target and renamed into place at the end.
    An existing `out/CheXpert-v1.0-small` is refused unless `overwrite`. `images=False` writes the CSVs only.
    """
    started = time.perf_counter()
    patients = _check_int("patients", patients, 1, _MAX_PATIENTS)
    valid_patients = _check_int("valid_patients", valid_patients, 1, _MAX_PATIENTS)
    if patients + valid_patients > _MAX_PATIENTS:
        raise UserInputError(f"patients + valid_patients must be at most {_MAX_PATIENTS}")
    image_size = _check_int("image_size", image_size, 16, 1024)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    if stats is None:
        stats = load_stats()
    elif not isinstance(stats, dict):
        raise UserInputError(f"stats must be a dict of label statistics, got {type(stats).__name__}")
    model = label_model(stats)

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out} exists and is not a directory")
    target = out / DATASET_DIR
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise UserInputError(f"{target} already exists; remove it or pass overwrite=True")
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    train = draw_split(rng, model, "train", patients, 1)
    valid = draw_split(rng, model, "valid", valid_patients, patients + 1)

    tmp = out / f".{DATASET_DIR}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _write_csv(tmp / "train.csv", model.columns, train.rows)
        _write_csv(tmp / "valid.csv", model.columns, valid.rows)
        if images:
            from tqdm import tqdm

            total = len(train.paths) + len(valid.paths)
            with tqdm(total=total, unit="img", desc="synthesizing", disable=not progress) as bar:
                _write_images(tmp, train, seed, 1, image_size, bar)
                _write_images(tmp, valid, seed, 2, image_size, bar)
        old = None
        if target.exists() or target.is_symlink():
            old = out / f".{DATASET_DIR}.old-{os.getpid()}-{secrets.token_hex(4)}"
            target.rename(old)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)

    summary = {
        "root": str(out),
        "train_csv": str(target / "train.csv"),
        "valid_csv": str(target / "valid.csv"),
        "train_rows": len(train.rows),
        "valid_rows": len(valid.rows),
        "patients": patients,
        "valid_patients": valid_patients,
        "image_size": image_size,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info(
        "synthesized %d train + %d valid rows (%d + %d patients, %dpx, seed %d) under %s in %.1fs",
        summary["train_rows"], summary["valid_rows"], patients, valid_patients, image_size, seed, target,
        summary["seconds"],
    )  # fmt: skip
    return SynthSummary(**summary)
