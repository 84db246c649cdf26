"""Clinical image input: PNG, JPEG or DICOM bytes → a grey H×W float32 image in [0, 1].

The type is detected from the content, never the file name. Every way an upload can be wrong is
an `ImageInputError` with an HTTP status and a message for the user; nothing else escapes. What
comes back carries no patient identifier: only the pixels and a few acquisition facts.
numpy, Pillow and pydicom only (no torch), for the serving image.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from chexops.core.errors import UserInputError
from chexops.imaging.preprocessing import SIGNIFICANT_BITS, open_image, scale_to_unit, to_grey

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
        raise ImageInputError(
            f"the upload is {len(data) / 2**20:.1f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB.", status=413
        )
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
        raise ImageInputError(
            f"the image is {width}×{height} pixels; at least {limits.min_side}×{limits.min_side} is needed.", status=422
        )
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise ImageInputError(
            f"the image is {width}×{height} pixels, over the limit of {limits.max_pixels:,} pixels "
            f"(and {limits.max_side} per side).",
            status=413,
        )


def _decode_raster(data: bytes, kind: str, limits: ImageLimits) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                _check_size(*probe.size, limits)
            image = open_image(io.BytesIO(data))
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(
            f"the image would decompress to too many pixels, over the limit of {limits.max_pixels:,}.", status=413
        ) from None
    except UnidentifiedImageError:
        raise ImageInputError(f"the {kind.upper()} file cannot be read.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"the {kind.upper()} file is damaged or truncated ({exc}).") from None
    grey = to_grey(image)
    info = {"format": kind, "width": grey.shape[1], "height": grey.shape[0], "mode": image.mode}
    if SIGNIFICANT_BITS in image.info:
        info[SIGNIFICANT_BITS] = image.info[SIGNIFICANT_BITS]
    return DecodedImage(grey, kind, info)


_SOF = {
    0xC0,
    0xC1,
    0xC2,
    0xC3,
    0xC5,
    0xC6,
    0xC7,
    0xC9,
    0xCA,
    0xCB,
    0xCD,
    0xCE,
    0xCF,
    0xF7,
}  # JPEG and JPEG-LS frame headers
_J2K_SIZ = b"\xff\x4f\xff\x51"  # SOC then SIZ: the start of every JPEG 2000 (and HTJ2K) codestream


def codestream_size(head: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) declared by a JPEG / JPEG-LS SOF or a JPEG 2000 SIZ marker in the
    first bytes of a compressed frame; None when neither is found."""
    at = head.find(_J2K_SIZ, 0, 4096)
    if at >= 0 and len(head) >= at + 4 + 38:
        lsiz, _rsiz, xsiz, ysiz, xo, yo = struct.unpack(">HHIIII", head[at + 4 : at + 24])
        csiz = struct.unpack(">H", head[at + 40 : at + 42])[0]
        return max(xsiz - xo, 0), max(ysiz - yo, 0), csiz
    if head[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        length = struct.unpack(">H", head[pos + 2 : pos + 4])[0]
        if marker in _SOF and pos + 10 <= len(head):
            height, width = struct.unpack(">HH", head[pos + 5 : pos + 9])
            return width, height, head[pos + 9]
        pos += 2 + length
    return None


def _check_codestream(ds: Any, rows: int, cols: int, limits: ImageLimits) -> None:
    """A compressed frame's own dimensions, checked before any pixel is decompressed: a JPEG 2000 or
    JPEG codestream may claim far more pixels than the DICOM header (a decompression bomb)."""
    from pydicom.encaps import generate_fragments
    from pydicom.uid import RLELossless

    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or not syntax.is_encapsulated or syntax == RLELossless:
        return  # native pixels (checked through Rows × Columns) or RLE, whose size is Rows × Columns
    try:
        fragments = generate_fragments(ds.PixelData)
        next(fragments)  # the Basic Offset Table item (empty or not) always comes first
        first = next(fragments, b"")
    except (ValueError, StopIteration, TypeError, EOFError) as exc:
        raise ImageInputError(f"the DICOM's compressed pixel data cannot be read ({exc}).") from None
    size = codestream_size(bytes(first[:65536]))
    if size is None:
        raise ImageInputError(
            "the DICOM's compressed pixel data has no JPEG or JPEG 2000 header declaring its size.", status=422
        )
    width, height, components = size
    if width == 0 or height == 0:
        raise ImageInputError("the DICOM's compressed image does not declare its size.", status=422)
    try:
        _check_size(width, height, limits)
    except ImageInputError as exc:
        raise ImageInputError(f"the compressed codestream inside the DICOM declares {exc}", status=exc.status) from None
    if (width, height) != (cols, rows) or components > 4:
        raise ImageInputError(
            f"the compressed codestream is {width}×{height} pixels with {components} components, but the DICOM "
            f"header says {cols}×{rows}: the file is inconsistent.",
            status=422,
        )


def _dicom_range(ds: Any, windowed: bool) -> tuple[float, float]:
    """The value range the header declares for the pixels after the modality LUT (and after the VOI
    window, whose output spans the same range; a VOI LUT table spans its own output bits)."""
    if windowed and "VOILUTSequence" in ds:  # apply_voi_lut(prefer_lut=True) uses the table
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 8) or 8)
    if "ModalityLUTSequence" in ds:
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return float(min(lo, hi)), float(max(lo, hi))


def _decode_dicom(data: bytes, limits: ImageLimits) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageInputError(f"the DICOM file cannot be parsed ({exc}).") from None
    if "PixelData" not in ds:
        raise ImageInputError(
            "the DICOM file holds no pixel data (is it a report or a structured document?).", status=422
        )
    modality = str(ds.get("Modality", "")).upper()
    if limits.modalities and modality not in limits.modalities:
        raise ImageInputError(
            f"the DICOM modality is {modality or 'missing'}; this service reads chest radiographs "
            f"({', '.join(sorted(limits.modalities))}).",
            status=422,
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(cols, rows, limits)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageInputError("the DICOM file holds several frames; send one radiograph.", status=422)
    _check_codestream(ds, rows, cols, limits)
    windowed = "WindowCenter" in ds or "VOILUTSequence" in ds
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
            values = apply_modality_lut(pixels, ds).astype(np.float64)
            if windowed:
                values = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
            lo, hi = _dicom_range(ds, windowed)
    except Exception as exc:  # noqa: BLE001 - decoders fail in many ways on damaged data
        raise ImageInputError(f"the DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc}).") from None
    if not np.isfinite(values).all():  # e.g. a NaN or overflowing Rescale Slope: never a silently blank image
        raise ImageInputError(
            "the DICOM pixel values are not finite after its rescale/window (Rescale Slope, "
            "Rescale Intercept, Window): the file is damaged.",
            status=422,
        )
    if values.ndim == 3 and values.shape[-1] in (3, 4):
        values = values[..., :3].mean(axis=-1)
    if values.ndim != 2:
        raise ImageInputError(f"the DICOM pixel data has shape {values.shape}; one grey image is expected.", status=422)
    grey = scale_to_unit(values, lo, hi)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "MONOCHROME1":
        grey = 1.0 - grey
    info = {
        "format": "dicom",
        "width": cols,
        "height": rows,
        "modality": modality,
        "photometric": photometric,
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "view_position": str(ds.get("ViewPosition", "")),
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
    }
    return DecodedImage(np.ascontiguousarray(grey), "dicom", info)


def to_png(grey: np.ndarray) -> bytes:
    """The pixels alone, re-encoded as a 16-bit grey PNG, with no metadata but its `sBIT` chunk (16
    significant bits, so that a dark image reads back as it was): how a DICOM upload is kept."""
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([16]))
    # compress_level=1: about 3x faster than the default for about 12% more bytes, off the hot path's CPU
    Image.fromarray(np.round(np.clip(grey, 0, 1) * 65535).astype(np.uint16)).save(
        buffer, format="PNG", compress_level=1, pnginfo=info
    )
    return buffer.getvalue()
