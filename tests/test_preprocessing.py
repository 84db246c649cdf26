"""Preprocessing: every image mode becomes the same normalised input; no torch import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from chexops.imaging.preprocessing import PreprocessSpec, preprocess, preprocess_array, to_grey


def test_imports_no_torch():
    code = "import sys, chexops.imaging.preprocessing; print('torch' in sys.modules, 'monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False False"


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "LA"])
def test_modes_agree_with_grey(mode):
    grey = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1)))
    spec = PreprocessSpec(size=32, channels=3, mean=(0.5,), std=(0.25,))
    expected = preprocess(grey, spec)
    got = preprocess(grey.convert(mode), spec)
    assert got.shape == (3, 32, 32) and got.dtype == np.float32
    assert np.abs(got - expected).max() < (0.05 if mode == "P" else 0.02)


def test_sixteen_bit_uses_full_range():
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    grey = to_grey(Image.fromarray(ramp))
    assert grey.min() == 0.0 and abs(grey.max() - 1.0) < 1e-6


def test_normalisation_and_channels():
    x = preprocess_array(
        np.full((10, 20), 0.75, np.float32), PreprocessSpec(size=8, channels=1, mean=(0.5,), std=(0.25,))
    )
    assert x.shape == (1, 8, 8) and np.allclose(x, 1.0)
    x3 = preprocess_array(
        np.full((10, 20), 0.5, np.float32), PreprocessSpec(size=8, channels=3, mean=(0.5, 0.4, 0.3), std=(0.5,))
    )
    assert np.allclose(x3[:, 0, 0], [0.0, 0.2, 0.4])


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("L", (40, 20), 0)
    image.paste(255, (0, 0, 10, 20))  # bright left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(tmp_path / "r.jpg", exif=exif)
    grey = to_grey(Image.open(tmp_path / "r.jpg"))
    assert grey.shape == (40, 20)
    assert grey[:8].mean() > 0.8 and grey[-8:].mean() < 0.2


def test_spec_roundtrip_and_validation():
    spec = PreprocessSpec(size=64, channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError):
        PreprocessSpec(size=64, channels=2)
    with pytest.raises(ValueError):
        PreprocessSpec(size=64, channels=3, mean=(0.1, 0.2))


def twelve_bit(dark: bool = False) -> np.ndarray:
    """A 12-bit ramp (0..4095, or 0..1500 when dark) and nothing above it."""
    top = 1500 if dark else 4095
    return np.round(np.tile(np.linspace(0, top, 64), (48, 1))).astype(np.uint16)


def save_png(path, array: np.ndarray, sbit: int | None = None):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(array).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(
    "dark,sbit", [(False, None), (False, 12), (True, 12)], ids=["12bit-no-sbit", "12bit-sbit", "dark-12bit-sbit"]
)
def test_twelve_bit_png_and_its_eight_bit_rendition_agree(tmp_path, dark, sbit):
    from chexops.imaging.preprocessing import load_image

    values = twelve_bit(dark)
    eight = np.round(values / 4095 * 255).astype(np.uint8)
    wide = to_grey(load_image(save_png(tmp_path / "12.png", values, sbit)))
    narrow = to_grey(load_image(save_png(tmp_path / "8.png", eight)))
    assert np.abs(wide - values / 4095).max() < 1e-6  # the stored 12 bits, not /65535 (6% bright) nor min–max
    assert np.abs(wide - narrow).max() <= 0.5 / 255 + 1e-6


def test_sbit_beats_the_range_guess(tmp_path):
    from chexops.imaging.preprocessing import load_image

    values = twelve_bit(dark=True)  # max 1500 would be guessed as 12-bit; sBIT says 16
    grey = to_grey(load_image(save_png(tmp_path / "16.png", values, sbit=16)))
    assert abs(grey.max() - 1500 / 65535) < 1e-6
