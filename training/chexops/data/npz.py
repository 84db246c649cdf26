"""Datasets stored as NumPy archives (MedMNIST layout): `{train,val,test}_images` and `*_labels`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexops.core.errors import DataError

SPLITS = ("train", "val", "test")


def read_npz(path: str | Path, labels: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (uint8 images N×H×W, float32 labels N×len(labels))}; the label names are configuration."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset archive {path} does not exist.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable .npz archive: {exc}.") from None
    out = {}
    with archive:
        for split in SPLITS:
            key_x, key_y = f"{split}_images", f"{split}_labels"
            if key_x not in archive.files:
                if split == "test":
                    continue
                raise DataError(f"{path} has no array {key_x!r}; it holds {', '.join(archive.files)}.")
            images = archive[key_x]
            if key_y not in archive.files:
                raise DataError(f"{path} has {key_x!r} but no {key_y!r}.")
            y = np.asarray(archive[key_y], dtype=np.float32)
            y = y.reshape(len(images), -1) if len(images) else y.reshape(0, y.shape[-1] if y.ndim > 1 else len(labels))
            if images.ndim == 4 and images.shape[-1] in (1, 3):
                images = images.mean(axis=-1).astype(images.dtype)
            if images.ndim != 3:
                raise DataError(f"{path}: {key_x} must be N×H×W (grey) images, got shape {images.shape}.")
            if y.shape[1] != len(labels):
                raise DataError(
                    f"{path}: {key_y} has {y.shape[1]} label column(s) but the config names {len(labels)} "
                    f"({', '.join(labels)}); set data.labels to match the archive."
                )
            if not np.isin(y, (0.0, 1.0)).all():
                raise DataError(f"{path}: {key_y} must hold only 0 and 1.")
            out[split] = (images, y)
    return out
