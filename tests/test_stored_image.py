"""The image a prediction keeps (chexops.serving.stored_image): a PNG or JPEG kept as its own bytes
reads back as exactly the pixels that were classified and carries none of the upload's metadata;
whatever cannot be kept that way (EXIF, DICOM, too large) is re-encoded from its pixels."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from chexops.imaging.decode import decode
from chexops.serving.stored_image import PNG_KEPT, kept_image
from support import dicom_bytes, dicom_dataset

SECRET = b"DOE^JANE 19450101 MRN-123456"


def chest(side: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    return np.clip(0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y) + rng.normal(0, 0.05, (side, side)), 0, 1)


def png(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def jpeg(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **save)
    return buffer.getvalue()


def with_text(data: bytes) -> bytes:
    """A PNG with identifiers in text chunks before the image data, and bytes after IEND."""
    info = PngImagePlugin.PngInfo()
    info.add_text("PatientName", SECRET.decode())
    info.add_itxt("Comment", SECRET.decode(), zip=True)
    image = Image.open(io.BytesIO(data))
    image.load()
    return (
        png(
            image,
            pnginfo=info,
            **({"transparency": image.info["transparency"]} if "transparency" in image.info else {}),
        )
        + SECRET
    )


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_chunks(data: bytes) -> list[bytes]:
    kinds, i = [], 8
    while i < len(data):
        length, kind = struct.unpack(">I4s", data[i : i + 8])
        kinds.append(kind)
        i += 12 + length
        if kind == b"IEND":
            break
    return kinds


def sixteen_bit_with_sbit() -> bytes:
    values = (chest() * 4095).astype(np.uint16)  # a 12-bit image: sBIT 12 makes it read as bright as it is
    data = png(Image.fromarray(values))
    return data[:33] + chunk(b"sBIT", bytes([12])) + data[33:]


def palette_with_transparency() -> bytes:
    image = Image.fromarray((chest() * 255).astype(np.uint8)).convert("P")
    return png(image, transparency=0)


def jpeg_with_metadata(mode: str = "L", **save) -> bytes:
    grey = Image.fromarray((chest() * 255).astype(np.uint8))
    data = jpeg(grey if mode == "L" else Image.merge("RGB", [grey] * 3), **save)
    com = b"\xff\xfe" + struct.pack(">H", len(SECRET) + 2) + SECRET
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta>" + SECRET + b"</x:xmpmeta>"
    app1 = b"\xff\xe1" + struct.pack(">H", len(xmp) + 2) + xmp
    return data[:2] + com + app1 + data[2:] + SECRET


UPLOADS = {
    "8-bit PNG with text chunks": lambda: with_text(png(Image.fromarray((chest() * 255).astype(np.uint8)))),
    "16-bit PNG with sBIT and text chunks": lambda: with_text(sixteen_bit_with_sbit()),
    "palette PNG with transparency and text chunks": lambda: with_text(palette_with_transparency()),
    "grey JPEG with COM, XMP and trailing bytes": lambda: jpeg_with_metadata(),
    "RGB progressive JPEG with restart markers": lambda: jpeg_with_metadata(
        "RGB", progressive=True, restart_marker_blocks=4
    ),
}


@pytest.mark.parametrize("name", list(UPLOADS))
def test_a_png_or_jpeg_is_kept_as_its_own_pixels_without_its_metadata(name):
    data = UPLOADS[name]()
    assert SECRET in data
    decoded = decode(data)
    kept = kept_image(data, decoded, max_side=1024)
    assert SECRET not in kept and len(kept) < len(data)
    assert kept[:3] == data[:3]  # the upload's own compression, not a re-encoding
    np.testing.assert_array_equal(decode(kept).grey, decoded.grey)
    if decoded.kind == "png":
        assert set(png_chunks(kept)) <= PNG_KEPT


def test_real_radiographs_are_kept_as_they_read(shared):
    radiographs = sorted((shared / "real-cxr").glob("*.png"))
    assert radiographs, f"no PNG radiograph in {shared / 'real-cxr'}"
    for path in radiographs:
        data = path.read_bytes()
        decoded = decode(data)
        kept = kept_image(data, decoded, max_side=1024)
        assert kept.startswith(b"\x89PNG") and len(kept) <= len(data)
        np.testing.assert_array_equal(decode(kept).grey, decoded.grey)


def test_exif_dicom_and_large_images_are_re_encoded_from_their_pixels():
    rotated = Image.fromarray((chest(64)[:, :48] * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate when read
    exif[0x013B] = SECRET.decode()  # Artist
    cases = {
        "EXIF JPEG": jpeg(rotated, exif=exif.tobytes()),
        "EXIF PNG": png(rotated, exif=exif.tobytes()),
        "DICOM": dicom_bytes(dicom_dataset((chest(64) * 4095).astype(np.uint16))),
        "large PNG": png(Image.fromarray((chest(300) * 255).astype(np.uint8))),
    }
    for name, data in cases.items():
        decoded = decode(data)
        kept = kept_image(data, decoded, max_side=200)
        assert SECRET not in kept, name
        again = Image.open(io.BytesIO(kept))
        assert again.format == "JPEG" and again.mode == "L", name
        assert not (set(again.info) & {"exif", "comment", "dpi"}), (name, again.info)
        if name == "large PNG":
            assert max(again.size) == 200
        else:  # 8 bits, quality 90: within a few grey levels of what was classified
            assert np.abs(decode(kept).grey - decoded.grey).mean() < 0.02, name
    assert decode(cases["EXIF JPEG"]).grey.shape == (48, 64)  # the orientation mattered


def test_a_structure_it_does_not_follow_is_re_encoded_not_refused():
    data = png(Image.fromarray((chest() * 255).astype(np.uint8)))
    no_iend = data[: data.rindex(b"IEND") - 4]  # Pillow reads it; the chunk walk finds no end
    decoded = decode(no_iend)
    kept = kept_image(no_iend, decoded, max_side=1024)
    assert kept != no_iend and Image.open(io.BytesIO(kept)).format == "JPEG"
    assert np.abs(decode(kept).grey - decoded.grey).mean() < 0.02
