"""The image a prediction keeps for the next training set: the pixels, never a patient identifier.

A PNG or JPEG upload that fits the kept size is kept as its own compressed bytes with every chunk or
segment that is not image data removed (PNG: IHDR, PLTE, tRNS, sBIT, IDAT, IEND stay; JPEG: the
frame, tables and scans stay, every APPn but Adobe's colour-transform flag, COM and anything after
the end go). Nothing is decoded or re-encoded, so keeping it costs the service almost no CPU, and it
reads back as exactly the pixels that were classified (the same intensity rule, `sBIT` included).

Everything else is re-encoded from the decoded pixels as an 8-bit grey JPEG (quality 90, JFIF header only),
scaled down to the kept size: DICOM (its header is the identifier's home), a larger image, and a PNG
or JPEG with EXIF (its orientation changes how the pixels read, and EXIF can carry names and dates).
Why that size: the model sees its input size (`preprocessing.size`, at most 320 px here) and a clinician
reviewing a case for the training set wants about 1024 px on a side, at a display's 8 bits, which is
also CheXpert's own image format (8-bit JPEG). A 16-bit PNG of the same pixels was 4× the DICOM
upload (516 kB for a 127 kB CR); this is about its size (125 kB; docs/benchmarks.md).
"""

from __future__ import annotations

import struct

import numpy as np

from chexops.imaging.decode import DecodedImage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_KEPT = frozenset({b"IHDR", b"PLTE", b"tRNS", b"sBIT", b"IDAT", b"IEND"})
_EXIF_TEXT = b"Raw profile type exif"  # ImageMagick's EXIF in a PNG text chunk, which Pillow reads too


class NotKeptAsIs(Exception):
    """The upload cannot be kept as its own bytes: re-encode its pixels."""


def kept_image(data: bytes, decoded: DecodedImage, max_side: int) -> bytes:
    """The bytes to keep for a decoded upload (`max_side` 0: any size is kept as it is)."""
    height, width = decoded.grey.shape
    if not max_side or max(height, width) <= max_side:
        try:
            if decoded.kind == "png":
                return png_without_metadata(data)
            if decoded.kind == "jpeg":
                return jpeg_without_metadata(data)
        except NotKeptAsIs:
            pass
    return review_jpeg(_scaled(decoded.grey, max_side))


JPEG_QUALITY = 90


def review_jpeg(grey: np.ndarray) -> bytes:
    """Grey pixels in [0, 1] as an 8-bit JPEG with no metadata but its JFIF header."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=JPEG_QUALITY
    )
    return buffer.getvalue()


def png_without_metadata(data: bytes) -> bytes:
    """The PNG's image chunks alone, in order, up to IEND."""
    if not data.startswith(PNG_SIGNATURE):
        raise NotKeptAsIs("not a PNG")
    out, i = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while True:
        if i + 12 > len(data):
            raise NotKeptAsIs("a truncated chunk")
        length, kind = struct.unpack(">I4s", data[i : i + 8])
        end = i + 12 + length
        if end > len(data):
            raise NotKeptAsIs("a truncated chunk")
        if kind == b"eXIf" or (kind in (b"tEXt", b"zTXt", b"iTXt") and data[i + 8 : end - 4].startswith(_EXIF_TEXT)):
            raise NotKeptAsIs("EXIF")
        if kind in PNG_KEPT:
            out.append(data[i:end])
        i = end
        if kind == b"IEND":
            return b"".join(out)


def jpeg_without_metadata(data: bytes) -> bytes:
    """The JPEG's frame, tables and entropy-coded scans alone, up to EOI."""
    if not data.startswith(b"\xff\xd8"):
        raise NotKeptAsIs("not a JPEG")
    out, i, n = [b"\xff\xd8"], 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            raise NotKeptAsIs("bytes between segments")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # EOI: whatever follows is not the image
            out.append(b"\xff\xd9")
            return b"".join(out)
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            out.append(data[i : i + 2])
            i += 2
            continue
        if i + 4 > n:
            raise NotKeptAsIs("a truncated segment")
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if end > n:
            raise NotKeptAsIs("a truncated segment")
        segment = data[i:end]
        if marker == 0xE1 and segment[4:10] == b"Exif\x00\x00":
            raise NotKeptAsIs("EXIF")
        metadata = marker == 0xFE or (0xE0 <= marker <= 0xEF and not (marker == 0xEE and segment[4:9] == b"Adobe"))
        if not metadata:
            out.append(segment)
        i = end
        if marker == 0xDA:  # a scan: entropy-coded bytes up to the next marker that is not a restart
            j = i
            while True:
                j = data.find(b"\xff", j)
                if j < 0 or j + 1 >= n:
                    raise NotKeptAsIs("a scan without an end")
                following = data[j + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                    j += 1 if following == 0xFF else 2
                    continue
                break
            out.append(data[i:j])
            i = j
    raise NotKeptAsIs("no end of image")


def _scaled(grey: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    h, w = grey.shape
    if not max_side or max(h, w) <= max_side:
        return grey
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(grey, mode="F").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
