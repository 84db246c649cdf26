"""Image preprocessing shared by training and serving: grey scale, resize, normalise.

numpy and Pillow only (no torch), so the serving image can import this very module. The
`PreprocessSpec` travels inside the model's metadata; `preprocess` is the single definition of
what a model sees.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

SPEC_VERSION = 1


@dataclass(frozen=True)
class PreprocessSpec:
    """How a radiograph becomes a model input (C×H×W float32)."""

    size: int = 224
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    resample: str = "bilinear"
    version: int = field(default=SPEC_VERSION)

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 2048:
            raise ValueError(f"preprocess size must be within 8..2048, got {self.size}")
        if self.channels not in (1, 3):
            raise ValueError(f"preprocess channels must be 1 or 3, got {self.channels}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            object.__setattr__(self, name, tuple(float(v) for v in values))
            if len(getattr(self, name)) not in (1, self.channels):
                raise ValueError(f"preprocess {name} needs 1 or {self.channels} values, got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("preprocess std values must be positive")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"preprocess resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessSpec":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str) -> "PreprocessSpec":
        return cls.from_dict(json.loads(text))


_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def to_grey(image: Image.Image) -> np.ndarray:
    """Any Pillow image (8/16-bit grey, RGB(A), palette, CMYK, EXIF-rotated) as H×W float32 in [0, 1]."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image, dtype=np.float32) / 65535.0
    elif mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float32)
        lo, hi = float(array.min()), float(array.max())
        array = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
    else:
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, image)
        array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(array, dtype=np.float32)


def preprocess_array(grey: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """An H×W grey array in [0, 1] as a normalised C×size×size float32 model input."""
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {grey.shape}")
    resized = Image.fromarray(grey.astype(np.float32, copy=False), mode="F").resize(
        (spec.size, spec.size), _RESAMPLE[spec.resample]
    )
    x = np.asarray(resized, dtype=np.float32)
    channels = np.repeat(x[None], spec.channels, axis=0)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((channels - mean) / std, dtype=np.float32)


def preprocess(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """A Pillow image as a model input: `preprocess_array(to_grey(image), spec)`."""
    return preprocess_array(to_grey(image), spec)


def load_image(path: str | Path) -> Image.Image:
    """Open an image file fully (raises OSError / PIL.UnidentifiedImageError when unreadable)."""
    with Image.open(path) as image:
        image.load()
        return image.copy() if image.mode != "P" else image.convert("RGBA")
