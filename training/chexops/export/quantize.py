"""int8 versions of an exported ONNX model and how they compare with fp32 (ONNX Runtime, no torch).

- Static QDQ (`quantize_static`, QuantFormat.QDQ, per-channel weights), calibrated on real,
  preprocessed training images of the model's own dataset, never random noise.
- Dynamic (`quantize_dynamic`), for comparison only.
- Latency: batch 1, a fixed number of intra-op threads, median of N runs after a warm-up.
Graph outputs stay float32: QDQ ends every output in a DequantizeLinear.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from chexops.export.files import INPUT_NAME, session
from chexops.imaging.preprocessing import PreprocessSpec, load_image, preprocess

log = logging.getLogger(__name__)


def split_inputs(split, spec: PreprocessSpec, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Preprocessed images (N×C×H×W float32) of a `chexops.data.loading.Split`: all of them, or
    `limit` drawn without replacement by a fixed seed."""
    from PIL import Image

    n = len(split)
    order = (
        np.arange(n)
        if limit is None or limit >= n
        else np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    )
    out = np.empty((len(order), spec.channels, spec.size, spec.size), dtype=np.float32)
    for k, i in enumerate(order):
        image = Image.fromarray(split.images[i]) if split.images is not None else load_image(split.paths[i])
        out[k] = preprocess(image, spec)
    return out


def run_batches(sess, x: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Every output of `sess` on `x`, run in batches and concatenated."""
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, len(x), batch_size):
        for name, value in zip(names, sess.run(names, {INPUT_NAME: x[start : start + batch_size]})):
            parts[name].append(value)
    return {n: np.concatenate(v) for n, v in parts.items()}


def latency_ms(path: str | Path, sample: np.ndarray, runs: int = 50, threads: int = 2, warmup: int = 5) -> float:
    """Median wall time in ms of one batch-1 inference of `sample` (1×C×H×W)."""
    sess = session(path, threads)
    feed = {INPUT_NAME: np.ascontiguousarray(sample[:1], dtype=np.float32)}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


class ImageCalibrationReader:
    """onnxruntime's CalibrationDataReader over preprocessed images, `batch_size` at a time."""

    def __init__(self, images: np.ndarray, batch_size: int = 16):
        self.images, self.batch_size = images, batch_size
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.images), self.batch_size):
            yield {INPUT_NAME: self.images[start : start + self.batch_size]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def quantize_static_qdq(
    fp32: Path, out: Path, calibration: np.ndarray, per_channel: bool = True, activation: str = "uint8"
) -> Path:
    """Static QDQ (int8 weights, per-channel by default; uint8 or int8 activations), MinMax-calibrated
    on `calibration` images. The model is pre-processed (shape inference, fusions) first.

    uint8 activations with int8 weights (U8S8) is the default: on both CPUs measured (docs/benchmarks.md)
    it was as fast as or faster than int8 activations (S8S8), up to 4x on the small CNN, at the same
    AUROC. On x86 CPUs without VNNI, ONNX Runtime warns that U8S8 can saturate; use "int8" there."""
    from onnxruntime.quantization import CalibrationDataReader

    if len(calibration) == 0:
        raise ValueError("static quantization needs at least one calibration image")

    class Reader(ImageCalibrationReader, CalibrationDataReader):
        pass

    prepared = out.with_name(out.stem + ".prep.onnx")
    with _quiet_root_logger():
        return _quantize_static(fp32, out, prepared, calibration, per_channel, activation, Reader)


def _quantize_static(fp32, out, prepared, calibration, per_channel, activation, reader) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        source = prepared
    except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation, never required
        log.warning("ONNX Runtime quantization pre-processing failed (%s); quantizing the raw export", exc)
        source = fp32
    try:
        quantize_static(
            str(source),
            str(out),
            reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    finally:
        prepared.unlink(missing_ok=True)
    return out


def quantize_dynamic_int8(fp32: Path, out: Path) -> Path:
    """Dynamic int8 (weights quantized ahead, activations at run time), for comparison."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QUInt8)
    return out


_BENIGN = ("Axis ", "Please consider to run pre-processing")  # per-channel on 1-D BatchNorm scales; a hint we follow


def _drop_benign(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_BENIGN)


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs each tensor through the root logger at INFO, and known-benign
    warnings per BatchNorm: keep those out, let other warnings through."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    root.addFilter(_drop_benign)
    try:
        yield
    finally:
        root.removeFilter(_drop_benign)
        root.setLevel(level)
