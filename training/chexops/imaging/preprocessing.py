"""Image preprocessing shared by training and serving: grey scale, resize, normalise.

numpy and Pillow only (no torch), so the serving image can import this very module. The
`PreprocessSpec` travels inside the model's metadata; `preprocess` is the single definition of
what a model sees.

The intensity convention, one rule for every input: a stored value `v` becomes
`(v - lo) / (hi - lo)`, clipped to [0, 1], where [lo, hi] is the range the file declares its
values to span, never the range the pixels happen to cover:

- 8-bit images (grey, RGB, palette, CMYK; JPEG and PNG): [0, 255].
- 16-bit PNG: [0, 2^b - 1] with b the significant bits of its `sBIT` chunk; without one, b is the
  smallest of 8, 10, 12, 14, 16 that holds the image's largest value (12-bit data stored in 16 bits
  is read as 12-bit, not as 6% of full scale).
- 32-bit integer images (mode I): as 16-bit when the values fit in 0..65535, else their min–max.
- floating-point images (mode F): as they are when within [0, 1], else their min–max.
- DICOM (`chexops.imaging.decode`): after the modality LUT (rescale), the VOI window or LUT of the header
  when there is one, and then the output range of that window (or LUT); without one, the range of
  `BitsStored` through the modality LUT. MONOCHROME1 is inverted afterwards.

`scale_to_unit` applies the rule; `to_grey` and the DICOM reader both call it.
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


SIGNIFICANT_BITS = "significant_bits"  # key in `Image.info`: a PNG's sBIT grey depth
_DEPTHS = (8, 10, 12, 14, 16)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def scale_to_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The intensity rule: `values` in the declared range [lo, hi] as float32 in [0, 1]."""
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((np.asarray(values, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def stored_bits(array: np.ndarray, significant: int | None) -> int:
    """The bit depth of 16-bit grey data: `sBIT` when given, else the smallest standard depth that holds the maximum."""
    if significant and 1 <= significant <= 16:
        return int(significant)
    top = float(array.max()) if array.size else 0.0
    return next(d for d in _DEPTHS if top <= 2**d - 1) if top <= 65535 else 16


def png_significant_bits(fp: Any) -> int | None:
    """The grey significant bits of a PNG's `sBIT` chunk (None without one), read from a binary
    file object positioned anywhere; only chunk headers before the image data are read."""
    start = fp.tell()
    try:
        fp.seek(0)
        if fp.read(8) != _PNG_SIGNATURE:
            return None
        while True:
            head = fp.read(8)
            if len(head) < 8:
                return None
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"sBIT":
                data = fp.read(length)
                return data[0] if data else None
            if kind in (b"IDAT", b"IEND"):
                return None
            fp.seek(length + 4, 1)
    finally:
        fp.seek(start)


def to_grey(image: Image.Image) -> np.ndarray:
    """Any Pillow image (8/16-bit grey, RGB(A), palette, CMYK, EXIF-rotated) as H×W float32 in [0, 1],
    by the module's intensity rule. `image.info["significant_bits"]` carries a PNG's sBIT (`load_image`
    and the upload decoder set it)."""
    significant = image.info.get(SIGNIFICANT_BITS)
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float32) if mode != "I" else np.asarray(image, dtype=np.float64)
        if mode == "I" and array.size and (array.min() < 0 or array.max() > 65535):
            array = scale_to_unit(array, float(array.min()), float(array.max()))
        else:
            array = scale_to_unit(array, 0.0, float(2 ** stored_bits(array, significant) - 1))
    elif mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if array.size and (array.min() < 0 or array.max() > 1):
            array = scale_to_unit(array, float(array.min()), float(array.max()))
    else:
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, image)
        array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(array, dtype=np.float32)


def resize_grey(grey: np.ndarray, width: int, height: int, resample: str = "bilinear") -> np.ndarray:
    """An H×W grey float array resized to height×width (the one resize of training, serving and `data prepare`)."""
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {grey.shape}")
    resized = Image.fromarray(grey.astype(np.float32, copy=False), mode="F").resize(
        (width, height), _RESAMPLE[resample]
    )
    return np.asarray(resized, dtype=np.float32)


def shorter_side_to(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) scaled so that the shorter side is `side` (never enlarged)."""
    scale = min(1.0, side / min(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def preprocess_array(grey: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """An H×W grey array in [0, 1] as a normalised C×size×size float32 model input."""
    x = resize_grey(grey, spec.size, spec.size, spec.resample)
    channels = np.repeat(x[None], spec.channels, axis=0)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((channels - mean) / std, dtype=np.float32)


def preprocess(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """A Pillow image as a model input: `preprocess_array(to_grey(image), spec)`."""
    return preprocess_array(to_grey(image), spec)


def open_image(fp: Any, min_side: int | None = None) -> Image.Image:
    """Open and fully decode an image from a binary file object, a PNG's sBIT kept in
    `info["significant_bits"]` (raises OSError / PIL.UnidentifiedImageError when unreadable).
    With `min_side`, a JPEG is decoded at the smallest reduced scale (1/2, 1/4, 1/8: Pillow's draft
    mode) whose shorter side still holds `min_side` pixels."""
    with Image.open(fp) as image:
        bits = png_significant_bits(fp) if image.format == "PNG" else None
        if min_side is not None and image.format == "JPEG":
            image.draft(image.mode if image.mode in ("L", "RGB") else None, shorter_side_to(*image.size, min_side))
        image.load()
        out = image.copy() if image.mode != "P" else image.convert("RGBA")
    if bits is not None:
        out.info[SIGNIFICANT_BITS] = bits
    return out


def load_image(path: str | Path) -> Image.Image:
    """Open an image file fully (raises OSError / PIL.UnidentifiedImageError when unreadable)."""
    with open(path, "rb") as fp:
        return open_image(fp)
