"""Clinical image input: PNG, JPEG and DICOM decoding, limits, and no identifiers in what is kept."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image

from chexops.imaging.decode import ImageInputError, ImageLimits, decode, to_png
from support import dicom_bytes, dicom_dataset


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def noise() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8))


def gradient(w: int = 64, h: int = 48) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w, dtype=np.float32), (h, 1)).astype(np.uint8)


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(Image.fromarray(gradient()), "PNG"),
        lambda: encode(Image.fromarray(gradient().astype(np.uint16) * 257), "PNG"),
        lambda: encode(Image.fromarray(gradient()).convert("RGB"), "PNG"),
        lambda: encode(Image.fromarray(gradient()).convert("RGBA"), "PNG"),
        lambda: encode(Image.fromarray(gradient()).convert("P"), "PNG"),
        lambda: encode(Image.fromarray(gradient()).convert("CMYK"), "JPEG", quality=95),
        lambda: encode(Image.fromarray(gradient()).convert("RGB"), "JPEG", quality=95, progressive=True),
    ],
    ids=["grey8", "grey16", "rgb", "rgba", "palette", "cmyk-jpeg", "progressive-jpeg"],
)
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
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    )


@pytest.mark.parametrize(
    "data,status,words",
    [
        (b"", 400, "empty"),
        (b"%PDF-1.7 not an image" * 10, 415, "not a PNG, JPEG or DICOM"),
        (encode(noise(), "PNG")[:3000], 400, "damaged or truncated"),
        (encode(noise(), "JPEG")[:3000], 400, "damaged or truncated"),
        (png_header_only(100_000, 100_000), 413, "over the limit"),
        (png_header_only(4, 4), 422, "at least"),
    ],
    ids=["empty", "non-image", "truncated-png", "truncated-jpeg", "bomb", "tiny"],
)
def test_bad_uploads_are_clear_errors(data, status, words):
    with pytest.raises(ImageInputError) as err:
        decode(data)
    assert err.value.status == status and words in str(err.value)


def test_upload_size_limit():
    with pytest.raises(ImageInputError) as err:
        decode(encode(Image.fromarray(gradient()), "PNG"), ImageLimits(max_bytes=100))
    assert err.value.status == 413


def synthetic_dicom(
    modality: str = "DX", pixels: bool = True, bits: int = 12, photometric: str = "MONOCHROME2"
) -> pydicom.Dataset:
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


@pytest.mark.parametrize(
    "ds,status,words",
    [
        (synthetic_dicom(modality="CT"), 422, "modality is CT"),
        (synthetic_dicom(pixels=False), 422, "no pixel data"),
    ],
    ids=["modality", "no-pixels"],
)
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


def png16(values: np.ndarray, sbit: int | None = None) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    return encode(Image.fromarray(values.astype(np.uint16)), "PNG", pnginfo=info)


def test_one_intensity_rule_for_png_jpeg_and_dicom(tmp_path):
    """A dark 12-bit radiograph as a 16-bit PNG (with and without sBIT), a 12-bit DICOM, and their
    8-bit renditions (PNG, JPEG, DICOM) all decode to the same values; training reads the same."""
    from chexops.imaging.preprocessing import load_image, to_grey

    values = np.round(np.tile(np.linspace(0, 1500, 64), (48, 1))).astype(np.uint16)  # 12-bit, never brighter than 37%
    eight = np.round(values / 4095 * 255).astype(np.uint8)
    expected = values / 4095
    decoded = {
        "png16": decode(png16(values)).grey,
        "png16-sbit": decode(png16(values, sbit=12)).grey,
        "png8": decode(encode(Image.fromarray(eight), "PNG")).grey,
        "jpeg8": decode(encode(Image.fromarray(eight), "JPEG", quality=100)).grey,
        "dicom12": decode(dicom_bytes(dicom_dataset(values, bits=12))).grey,
        "dicom8": decode(dicom_bytes(dicom_dataset(eight, bits=8))).grey,
    }
    for name, grey in decoded.items():
        assert np.abs(grey - expected).max() < (2.5 / 255 if name == "jpeg8" else 0.6 / 255), name
    (tmp_path / "x.png").write_bytes(png16(values, sbit=12))
    assert np.array_equal(to_grey(load_image(tmp_path / "x.png")), decoded["png16-sbit"])  # training == serving


def test_stored_png_reads_back_as_it_was():
    dark = np.full((32, 32), 0.02, np.float32)  # would be guessed as a few-bit image without its sBIT
    assert np.abs(decode(to_png(dark)).grey - dark).max() < 1e-4


def j2k_siz(width: int, height: int) -> bytes:
    """The start of a JPEG 2000 codestream: SOC, then a SIZ marker declaring width × height, one component."""
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, width, height, 0, 0, width, height, 0, 0, 1) + bytes([7, 1, 1])
    return b"\xff\x4f\xff\x51" + siz + b"\xff\x52" + b"\x00" * 200


def jpeg_sof(width: int, height: int) -> bytes:
    return (
        b"\xff\xd8" + b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + bytes([1, 0x11, 0]) + b"\x00" * 200
    )


def compressed_dicom(codestream: bytes, syntax: str, rows: int = 64, cols: int = 64) -> bytes:
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds = dicom_dataset(np.zeros((rows, cols), np.uint16), bits=8 if syntax.endswith(".50") else 12)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return dicom_bytes(ds)


@pytest.mark.parametrize(
    "codestream,syntax,status,words",
    [
        (
            j2k_siz(9000, 9000),
            "1.2.840.10008.1.2.4.90",
            413,
            "codestream inside the DICOM declares the image is 9000×9000",
        ),
        (
            jpeg_sof(9000, 9000),
            "1.2.840.10008.1.2.4.50",
            413,
            "codestream inside the DICOM declares the image is 9000×9000",
        ),
        (j2k_siz(128, 128), "1.2.840.10008.1.2.4.90", 422, "codestream is 128×128"),
        (b"\x00" * 300, "1.2.840.10008.1.2.4.90", 422, "no JPEG or JPEG 2000 header"),
    ],
    ids=["j2k-bomb", "jpeg-bomb", "j2k-mismatch", "no-header"],
)
def test_compressed_dicom_is_sized_from_its_codestream_before_decoding(codestream, syntax, status, words):
    with pytest.raises(ImageInputError) as err:
        decode(compressed_dicom(codestream, syntax))
    assert err.value.status == status and words in str(err.value)


def test_consistent_jpeg2000_dicom_decodes():
    values = np.tile(np.linspace(0, 4095, 64), (48, 1)).astype(np.uint16)
    codestream = encode(Image.fromarray(values), "JPEG2000", irreversible=False, no_jp2=True)
    grey = decode(compressed_dicom(codestream, "1.2.840.10008.1.2.4.90", rows=48, cols=64)).grey
    assert np.abs(grey - values / 4095).max() < 1e-3
