"""Fuzz `chexops.imaging.decode` (PNG, JPEG, DICOM bytes → grey image) with atheris (libFuzzer).

The contract under test: for ANY bytes, `decode` either returns a finite 2-D float32 image in [0, 1]
within the limits, or raises `ImageInputError` (a 4xx for the service). Any other exception, a
crash, a hang (-timeout) or runaway memory (-rss_limit_mb) is a bug; libFuzzer keeps the input as
`crash-*` / `timeout-*` / `oom-*` under -artifact_prefix. Keep such an input (if small) in
tests/fuzz_corpus/ as a regression case (tests/test_fuzz.py replays every file there).

    # what `make test` runs (tests/test_fuzz.py; CHEXOPS_FUZZ_SECONDS, default 45)
    PYTHONPATH=training python -m pytest tests/test_fuzz.py
    # a longer run: seeds and new inputs in a corpus directory of your own, crashes under /tmp/fuzz-
    PYTHONPATH=training python tests/fuzz_decode.py -max_total_time=3600 -rss_limit_mb=3072 -timeout=20 \
        -artifact_prefix=/tmp/fuzz- /tmp/chexops-fuzz-corpus

Seeds (written into CORPUS_DIR first): small generated PNG (8/16-bit grey, RGB, palette),
JPEG (baseline, progressive) and DICOM (12-bit, MONOCHROME1, rescaled) files, the team's real
radiographs in ../shared/data/real-cxr when present (CHEXOPS_SHARED_DATA), and tests/fuzz_corpus/.
"""

from __future__ import annotations

import io
import shutil
import sys
import warnings
from pathlib import Path

import atheris
import numpy as np

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "fuzz_corpus"
MAX_PIXELS = 4_000_000  # the service's limits, with a smaller pixel budget so that each input is quick


def check(data: bytes) -> None:
    """decode `data`; on success, the image must be what the model can take."""
    from chexops.imaging import decode as imaging

    limits = imaging.ImageLimits(max_bytes=8 * 2**20, max_pixels=MAX_PIXELS)
    try:
        decoded = imaging.decode(data, limits)
    except imaging.ImageInputError:
        return
    grey = decoded.grey
    assert grey.ndim == 2 and grey.dtype == np.float32, (grey.shape, grey.dtype)
    assert min(grey.shape) >= limits.min_side and grey.size <= limits.max_pixels, grey.shape
    assert np.isfinite(grey).all(), "non-finite pixel values"
    assert grey.min() >= 0.0 and grey.max() <= 1.0, (float(grey.min()), float(grey.max()))


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris's name
    check(data)


def write_seeds(folder: Path, shared: Path | None = None) -> list[Path]:
    """Small generated PNG/JPEG/DICOM files, the real radiographs under `shared` (if any) and the
    regression cases, copied into `folder`."""
    sys.path.insert(0, str(HERE))
    from PIL import Image

    from support import dicom_bytes, dicom_dataset

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    grey8 = (np.tile(np.linspace(0, 255, 40), (24, 1)) + rng.integers(0, 30, (24, 40))).clip(0, 255).astype(np.uint8)
    grey16 = grey8.astype(np.uint16) * 257

    rotated = Image.Exif()
    rotated[0x0112] = 6  # EXIF orientation: rotate

    def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **kw)
        return buffer.getvalue()

    seeds = {
        "grey8.png": encoded(Image.fromarray(grey8), "PNG"),
        "grey16.png": encoded(Image.fromarray(grey16), "PNG"),
        "rgb.png": encoded(Image.fromarray(grey8).convert("RGB"), "PNG"),
        "palette-transparent.png": encoded(Image.fromarray(grey8).convert("P"), "PNG", transparency=0),
        "baseline.jpg": encoded(Image.fromarray(grey8), "JPEG", quality=80),
        "progressive-exif.jpg": encoded(Image.fromarray(grey8).convert("RGB"), "JPEG", progressive=True, exif=rotated),
        "dx12.dcm": dicom_bytes(dicom_dataset((grey16 >> 4).astype(np.uint16))),
        "cr-mono1-rescaled.dcm": dicom_bytes(
            dicom_dataset(
                (grey16 >> 4).astype(np.uint16), modality="CR", photometric="MONOCHROME1", rescale=(2.0, -1024.0)
            )
        ),
    }
    written = []
    for name, data in seeds.items():
        (folder / name).write_bytes(data)
        written.append(folder / name)
    sources = sorted(p for p in REGRESSIONS.glob("*") if p.suffix != ".md")
    if shared is not None and shared.is_dir():
        sources += sorted(p for p in shared.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm"))
    for path in sources:
        if path.is_file() and not path.name.startswith("."):
            shutil.copyfile(path, folder / path.name)
            written.append(folder / path.name)
    return written


def main(argv: list[str]) -> None:
    # coverage feedback from the Python parts of the decoders (this process only; not numpy or the stdlib)
    with atheris.instrument_imports(include=["pydicom", "PIL", "chexops"]):
        import pydicom  # noqa: F401
        import pydicom.pixels  # noqa: F401
        from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin  # noqa: F401

        from chexops.imaging import decode as imaging  # noqa: F401
    from chexops.core.paths import shared_data

    corpora = [a for a in argv[1:] if not a.startswith("-")]
    if not corpora:
        sys.exit(f"usage: {argv[0]} [libFuzzer flags] CORPUS_DIR  (the seeds are written into it; new inputs too)")
    write_seeds(Path(corpora[0]), shared_data() / "real-cxr")
    warnings.simplefilter(
        "ignore"
    )  # pydicom and Pillow warn about every damaged file; decode's own filters still apply
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
