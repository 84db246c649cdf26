"""Clinical image input: PNG, JPEG or DICOM bytes → a grey H×W float32 image in [0, 1].

The type is detected from the content, never the file name. Every way an upload can be wrong is
an `ImageInputError` with an HTTP status and a message for the user; nothing else escapes. What
comes back carries no patient identifier: only the pixels and a few acquisition facts.
numpy, Pillow and pydicom only (no torch), for the serving image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserInputError
from .preprocessing import to_grey

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class ImageInputError(UserInputError):
    """An upload that cannot be used; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 16_384
    min_side: int = 16
    modalities: frozenset[str] = field(default_factory=lambda: frozenset({"CR", "DX"}))


@dataclass
class DecodedImage:
    grey: np.ndarray
    kind: str
    info: dict[str, Any]


def sniff(data: bytes) -> str:
    """'png', 'jpeg' or 'dicom' from the first bytes; raises `ImageInputError` (415) otherwise."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    raise ImageInputError("the upload is not a PNG, JPEG or DICOM (Part 10) file.", status=415)


def decode(data: bytes, limits: ImageLimits = ImageLimits()) -> DecodedImage:
    """Decode an upload, enforcing the size limits before any pixel is decompressed."""
    if not data:
        raise ImageInputError("the upload is empty.")
    if len(data) > limits.max_bytes:
        raise ImageInputError(f"the upload is {len(data) / 2**20:.1f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB.", status=413)
    kind = sniff(data)
    try:
        if kind == "dicom":
            return _decode_dicom(data, limits)
        return _decode_raster(data, kind, limits)
    except ImageInputError:
        raise
    except MemoryError:
        raise ImageInputError(f"the {kind.upper()} file is too large to decode.", status=413) from None
    except Exception as exc:  # noqa: BLE001 - hostile bytes break decoders in many ways (tests/fuzz_decode.py);
        # the type only: a decoder's message can quote the file's values (identifiers)
        raise ImageInputError(f"the {kind.upper()} file is damaged ({type(exc).__name__}).") from None


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width < limits.min_side or height < limits.min_side:
        raise ImageInputError(f"the image is {width}×{height} pixels; at least {limits.min_side}×{limits.min_side} is needed.", status=422)
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise ImageInputError(
            f"the image is {width}×{height} pixels, over the limit of {limits.max_pixels:,} pixels "
            f"(and {limits.max_side} per side).", status=413)


def _decode_raster(data: bytes, kind: str, limits: ImageLimits) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_size(*image.size, limits)
            image.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(f"the image would decompress to too many pixels, over the limit of {limits.max_pixels:,}.", status=413) from None
    except UnidentifiedImageError:
        raise ImageInputError(f"the {kind.upper()} file cannot be read.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"the {kind.upper()} file is damaged or truncated ({exc}).") from None
    grey = to_grey(image)
    return DecodedImage(grey, kind, {"format": kind, "width": grey.shape[1], "height": grey.shape[0], "mode": image.mode})


def _decode_dicom(data: bytes, limits: ImageLimits) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageInputError(f"the DICOM file cannot be parsed ({exc}).") from None
    if "PixelData" not in ds:
        raise ImageInputError("the DICOM file holds no pixel data (is it a report or a structured document?).", status=422)
    modality = str(ds.get("Modality", "")).upper()
    if limits.modalities and modality not in limits.modalities:
        raise ImageInputError(
            f"the DICOM modality is {modality or 'missing'}; this service reads chest radiographs "
            f"({', '.join(sorted(limits.modalities))}).", status=422)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(cols, rows, limits)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageInputError("the DICOM file holds several frames; send one radiograph.", status=422)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
            values = apply_modality_lut(pixels, ds).astype(np.float64)
            if "WindowCenter" in ds or "VOILUTSequence" in ds:
                values = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
    except Exception as exc:  # noqa: BLE001 - decoders fail in many ways on damaged data
        raise ImageInputError(f"the DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc}).") from None
    if not np.isfinite(values).all():  # e.g. a NaN or overflowing Rescale Slope: never a silently blank image
        raise ImageInputError("the DICOM pixel values are not finite after its rescale/window (Rescale Slope, "
                              "Rescale Intercept, Window): the file is damaged.", status=422)
    if values.ndim == 3 and values.shape[-1] in (3, 4):
        values = values[..., :3].mean(axis=-1)
    if values.ndim != 2:
        raise ImageInputError(f"the DICOM pixel data has shape {values.shape}; one grey image is expected.", status=422)
    lo, hi = float(values.min()), float(values.max())
    grey = ((values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)).astype(np.float32)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "MONOCHROME1":
        grey = 1.0 - grey
    info = {"format": "dicom", "width": cols, "height": rows, "modality": modality, "photometric": photometric,
            "bits_stored": int(ds.get("BitsStored", 0) or 0), "view_position": str(ds.get("ViewPosition", "")),
            "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", ""))}
    return DecodedImage(np.ascontiguousarray(grey), "dicom", info)


def to_png(grey: np.ndarray) -> bytes:
    """The pixels alone, re-encoded as a 16-bit grey PNG: what is stored, with no metadata at all."""
    buffer = io.BytesIO()
    # compress_level=1: about 3x faster than the default for about 12% more bytes, off the hot path's CPU
    Image.fromarray(np.round(np.clip(grey, 0, 1) * 65535).astype(np.uint16)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
