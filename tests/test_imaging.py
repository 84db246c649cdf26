"""Clinical image input: PNG, JPEG and DICOM decoding, limits, and no identifiers in what is kept."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image

from chexops.imaging import ImageInputError, ImageLimits, decode, to_png
from support import dicom_bytes, dicom_dataset


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def noise() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8))


def gradient(w: int = 64, h: int = 48) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w, dtype=np.float32), (h, 1)).astype(np.uint8)


@pytest.mark.parametrize("make", [
    lambda: encode(Image.fromarray(gradient()), "PNG"),
    lambda: encode(Image.fromarray(gradient().astype(np.uint16) * 257), "PNG"),
    lambda: encode(Image.fromarray(gradient()).convert("RGB"), "PNG"),
    lambda: encode(Image.fromarray(gradient()).convert("RGBA"), "PNG"),
    lambda: encode(Image.fromarray(gradient()).convert("P"), "PNG"),
    lambda: encode(Image.fromarray(gradient()).convert("CMYK"), "JPEG", quality=95),
    lambda: encode(Image.fromarray(gradient()).convert("RGB"), "JPEG", quality=95, progressive=True),
], ids=["grey8", "grey16", "rgb", "rgba", "palette", "cmyk-jpeg", "progressive-jpeg"])
def test_valid_variants_decode_to_the_same_grey(make):
    decoded = decode(make())
    assert decoded.grey.shape == (48, 64) and decoded.grey.dtype == np.float32
    assert np.abs(decoded.grey.mean(axis=0) - np.linspace(0, 1, 64)).max() < 0.08


def test_exif_rotated_jpeg_is_upright():
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode(encode(Image.fromarray(gradient()), "JPEG", exif=exif))
    assert decoded.grey.shape == (64, 48)


def test_content_decides_the_type_not_the_name():
    assert decode(encode(Image.fromarray(gradient()), "PNG")).kind == "png"
    assert decode(encode(Image.fromarray(gradient()), "JPEG")).kind == "jpeg"


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82"


@pytest.mark.parametrize("data,status,words", [
    (b"", 400, "empty"),
    (b"%PDF-1.7 not an image" * 10, 415, "not a PNG, JPEG or DICOM"),
    (encode(noise(), "PNG")[:3000], 400, "damaged or truncated"),
    (encode(noise(), "JPEG")[:3000], 400, "damaged or truncated"),
    (png_header_only(100_000, 100_000), 413, "over the limit"),
    (png_header_only(4, 4), 422, "at least"),
], ids=["empty", "non-image", "truncated-png", "truncated-jpeg", "bomb", "tiny"])
def test_bad_uploads_are_clear_errors(data, status, words):
    with pytest.raises(ImageInputError) as err:
        decode(data)
    assert err.value.status == status and words in str(err.value)


def test_upload_size_limit():
    with pytest.raises(ImageInputError) as err:
        decode(encode(Image.fromarray(gradient()), "PNG"), ImageLimits(max_bytes=100))
    assert err.value.status == 413


def synthetic_dicom(modality: str = "DX", pixels: bool = True, bits: int = 12, photometric: str = "MONOCHROME2") -> pydicom.Dataset:
    values = np.tile(np.linspace(0, 2**bits - 1, 64), (48, 1)) if pixels else None
    return dicom_dataset(values, modality, bits, photometric, rescale=(2, -100))


def test_dicom_rescale_window_and_monochrome1():
    base = decode(dicom_bytes(synthetic_dicom()))
    assert base.kind == "dicom" and base.info["bits_stored"] == 12
    assert np.abs(base.grey.mean(axis=0) - np.linspace(0, 1, 64)).max() < 0.01
    inverted = decode(dicom_bytes(synthetic_dicom(photometric="MONOCHROME1")))
    assert np.allclose(inverted.grey, 1 - base.grey)
    windowed = synthetic_dicom()
    windowed.WindowCenter, windowed.WindowWidth = 2000, 2000  # in rescaled units: the middle of the range
    grey = decode(dicom_bytes(windowed)).grey
    assert grey[:, 0].max() == 0.0 and grey[:, -1].min() == 1.0 and 0.2 < grey.mean() < 0.8


@pytest.mark.parametrize("ds,status,words", [
    (synthetic_dicom(modality="CT"), 422, "modality is CT"),
    (synthetic_dicom(pixels=False), 422, "no pixel data"),
], ids=["modality", "no-pixels"])
def test_dicom_refusals(ds, status, words):
    with pytest.raises(ImageInputError) as err:
        decode(dicom_bytes(ds))
    assert err.value.status == status and words in str(err.value)


def test_dicom_truncated_pixel_data():
    data = dicom_bytes(synthetic_dicom())
    with pytest.raises(ImageInputError) as err:
        decode(data[: len(data) - 2000])
    assert err.value.status in (400, 422)


def test_other_modality_when_configured():
    decoded = decode(dicom_bytes(synthetic_dicom(modality="CT")), ImageLimits(modalities=frozenset({"CT"})))
    assert decoded.info["modality"] == "CT"


def test_real_dicoms(shared):
    folder = shared / "real-cxr"
    mono2 = decode((folder / "siim_cr_chest_pa.dcm").read_bytes())
    mono1 = decode((folder / "siim_cr_chest_pa_monochrome1.dcm").read_bytes())
    assert mono2.grey.shape == (1024, 1024) and mono2.info["modality"] == "CR"
    assert np.allclose(mono1.grey, 1 - mono2.grey, atol=1e-6)  # same stored pixels, inverted interpretation
    j2k = decode((folder / "nema_cr_chest_jpeg2000.dcm").read_bytes())
    assert j2k.grey.shape == (1955, 1841) and j2k.info["bits_stored"] == 15
    assert 0.05 < j2k.grey.std()


def test_what_is_kept_carries_no_identifier(shared):
    raw = (shared / "real-cxr" / "nema_cr_chest_jpeg2000.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(raw))
    identifiers = [str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)]
    assert all(identifiers)
    decoded = decode(raw)
    kept = to_png(decoded.grey) + repr(decoded.info).encode()
    for value in identifiers:
        assert value.encode() not in kept
    restored = np.asarray(Image.open(io.BytesIO(to_png(decoded.grey))), dtype=np.float32) / 65535
    assert np.abs(restored - decoded.grey).max() < 1e-4
