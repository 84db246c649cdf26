"""Drift: the training reference stored with a model, and the live score a service exports.

The reference (`reference`, written at export into the ONNX metadata under `drift_reference`) holds,
for the training images the model was calibrated on:

- the intensity distribution of what the model sees (the resized grey image, before normalisation),
  in 10 bins whose edges are the reference's own deciles (each bin holds a tenth of the pixels);
- each finding's predicted-probability distribution, in ten bins of width 0.1 (fixed: a model whose
  probabilities barely vary would make quantile bins split hairs).

A service's `DriftMonitor` keeps the last `window` images (the service's CHEXOPS_DRIFT_WINDOW) and,
once it has `min_images` (CHEXOPS_DRIFT_MIN_IMAGES), scores them against the reference with the
population stability index, PSI = Σ (a − e)·ln(a / e) over the bins (e: reference share, a: window
share). The rule of thumb: below 0.1 no shift, 0.1–0.25 a moderate one, above that (`ALERT_PSI`) a
significant one (`k8s/monitoring/rules/drift.yaml` alerts there; tests/test_drift.py keeps the two
equal). Quantile bins make the score of a same-distribution sample about (bins − 1) / n: with 200
images ≈0.05 for intensities; for predictions at most that (fewer occupied bins, fewer degrees of freedom).

Prometheus series (beside the service's own, `chexops.serving.metrics`, whose
`chexops_finding_probability` histogram is the prediction distribution):

- chexops_drift_score{component="intensity"|"predictions"|"overall"}: PSI of the window; predictions is
  the mean over findings, overall the larger of the two
- chexops_drift_window_images: images in the window
- chexops_input_intensity_mean / chexops_input_intensity_std: histograms of each image's grey mean / spread
- chexops_input_pixels: histogram of the uploaded image's width × height
- chexops_input_images_total{format, modality, view}: uploads by kind (DICOM Modality and ViewPosition, else "unknown")

numpy only (the service has no torch).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from typing import Any

import numpy as np

from chexops.imaging.preprocessing import PreprocessSpec

log = logging.getLogger(__name__)

REFERENCE_KEY = "drift_reference"
INTENSITY_BINS = 10
PROBABILITY_EDGES = [round(0.1 * i, 1) for i in range(1, 10)]  # ten bins of width 0.1
EPS = 1e-4
ALERT_PSI = 0.25  # a significant shift: the alert's threshold in k8s/monitoring/rules/drift.yaml


def grey_inputs(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Model inputs (N×C×H×W or C×H×W, normalised) back to the grey images in [0, 1] they came from."""
    first = x[:, 0] if x.ndim == 4 else x[0]
    return first * spec.std[0] + spec.mean[0]


def _edges(values: np.ndarray, bins: int) -> list[float]:
    inner = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return [float(v) for v in np.unique(np.round(inner, 6))]


def _shares(values: np.ndarray, edges: list[float]) -> np.ndarray:
    counts = np.bincount(np.searchsorted(np.asarray(edges), np.ravel(values), side="right"), minlength=len(edges) + 1)
    return counts / max(1, counts.sum())


def reference(inputs: np.ndarray, probabilities: np.ndarray, spec: PreprocessSpec, labels: list[str]) -> dict[str, Any]:
    """The reference statistics of training inputs (N×C×H×W, as preprocessed) and the model's probabilities (N×K)."""
    grey = grey_inputs(inputs, spec)
    edges = _edges(grey, INTENSITY_BINS)
    predictions = {}
    for k, label in enumerate(labels):
        predictions[label] = {
            "edges": PROBABILITY_EDGES,
            "shares": _shares(probabilities[:, k], PROBABILITY_EDGES).round(6).tolist(),
        }
    return {
        "version": 1,
        "images": int(len(inputs)),
        "intensity": {
            "edges": edges,
            "shares": _shares(grey, edges).round(6).tolist(),
            "image_mean": float(grey.mean()),
            "image_std": float(grey.std()),
        },
        "predictions": predictions,
    }


def reference_json(inputs: np.ndarray, probabilities: np.ndarray, spec: PreprocessSpec, labels: list[str]) -> str:
    return json.dumps(reference(inputs, probabilities, spec, labels))


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins."""
    e = np.clip(np.asarray(expected, dtype=np.float64), EPS, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


class DriftMonitor:
    """The service's view of its inputs and predictions against the model's training reference.

    `observe` is called once per decoded image (cheap: one histogram of the model input). Without a
    reference in the model's metadata the input statistics are still exported; the score is not."""

    def __init__(
        self,
        ref: dict[str, Any] | None,
        spec: PreprocessSpec,
        labels: list[str],
        window: int,
        min_images: int,
        metrics: bool = True,
    ):
        self.ref, self.spec, self.labels = ref, spec, labels
        self.min_images = min_images
        self.window: deque[tuple[np.ndarray, dict[str, np.ndarray]]] = deque(maxlen=window)
        # Running sums of the window's shares: a score costs O(bins × findings) per image, not O(window × …).
        self._sum: tuple[np.ndarray, dict[str, np.ndarray]] | None = None
        self._seen = 0
        self.last: dict[str, float] = {}
        self.metrics = _Metrics() if metrics else None
        if ref:
            self.edges = ref["intensity"]["edges"]
            self.expected = np.asarray(ref["intensity"]["shares"])
            self.p_labels = [label for label in labels if label in ref["predictions"]]

    @classmethod
    def for_model(cls, model, window: int, min_images: int) -> "DriftMonitor":
        """From a `chexops.serving.inference.OnnxModel`: its metadata's reference; the last `window` images,
        scored once there are `min_images` (at most the window)."""
        raw = model.session.get_modelmeta().custom_metadata_map.get(REFERENCE_KEY)
        ref = json.loads(raw) if raw else None
        if ref is None:
            log.warning(
                "the model has no drift reference in its metadata (exported before drift monitoring): "
                "input statistics are exported, the drift score is not"
            )
        return cls(ref, model.spec, model.labels, window=max(1, window), min_images=max(1, min(min_images, window)))

    def observe(self, x: np.ndarray, probabilities: np.ndarray, info: dict[str, Any]) -> None:
        """One image: its model input (C×H×W), the K probabilities, the decoder's `info`."""
        grey = grey_inputs(x, self.spec)
        if self.metrics is not None:
            self.metrics.observe(grey, info)
        if not self.ref:
            return
        shares = _shares(grey, self.edges)
        probs = {
            label: _shares(probabilities[self.labels.index(label)], self.ref["predictions"][label]["edges"])
            for label in self.p_labels
        }
        if self._sum is None:
            self._sum = (
                np.zeros_like(shares, dtype=np.float64),
                {k: np.zeros_like(v, np.float64) for k, v in probs.items()},
            )
        if len(self.window) == self.window.maxlen:
            self._add(*self.window[0], sign=-1.0)  # the oldest leaves the window as this one enters
        self.window.append((shares, probs))
        self._add(shares, probs, sign=1.0)
        self._seen += 1
        if self._seen % self.window.maxlen == 0:  # summed afresh once a window: no rounding accumulates
            self._sum = (
                np.sum([s for s, _ in self.window], axis=0),
                {label: np.sum([p[label] for _, p in self.window], axis=0) for label in probs},
            )
        if len(self.window) >= self.min_images:
            self.last = self.scores()
            if self.metrics is not None:
                self.metrics.set_scores(self.last, len(self.window))

    def _add(self, shares: np.ndarray, probs: dict[str, np.ndarray], sign: float) -> None:
        total_shares, total_probs = self._sum
        total_shares += sign * shares
        for label, value in probs.items():
            total_probs[label] += sign * value

    def scores(self) -> dict[str, float]:
        """PSI of the window against the reference: intensity, predictions (mean over findings), overall (max)."""
        n = len(self.window)
        total_shares, total_probs = self._sum
        intensity = psi(self.expected, total_shares / n)
        per_label = [psi(self.ref["predictions"][label]["shares"], total_probs[label] / n) for label in self.p_labels]
        predictions = float(np.mean(per_label)) if per_label else 0.0
        return {
            "intensity": round(intensity, 5),
            "predictions": round(predictions, 5),
            "overall": round(max(intensity, predictions), 5),
        }


class _Metrics:
    """The Prometheus series (prometheus_client imported here, in the worker: see chexops.serving.metrics)."""

    def __init__(self):
        import prometheus_client as prom

        self.score = prom.Gauge(
            "chexops_drift_score",
            "Population stability index of recent inputs/predictions against the model's training reference",
            ["component"],
            multiprocess_mode="mostrecent",
        )
        self.size = prom.Gauge(
            "chexops_drift_window_images", "Images in the drift window", multiprocess_mode="mostrecent"
        )
        self.mean = prom.Histogram(
            "chexops_input_intensity_mean",
            "Mean grey level of each input (0-1)",
            buckets=tuple(round(0.1 * i, 1) for i in range(1, 11)),
        )
        self.std = prom.Histogram(
            "chexops_input_intensity_std",
            "Grey-level standard deviation of each input",
            buckets=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5),
        )
        self.pixels = prom.Histogram(
            "chexops_input_pixels",
            "Uploaded image size (width × height)",
            buckets=(64**2, 256**2, 512**2, 1024**2, 2048**2, 3072**2, 4096**2),
        )
        self.images = prom.Counter(
            "chexops_input_images", "Uploaded images by format, modality and view", ["format", "modality", "view"]
        )

    def observe(self, grey: np.ndarray, info: dict[str, Any]) -> None:
        self.mean.observe(float(grey.mean()))
        self.std.observe(float(grey.std()))
        width, height = info.get("width"), info.get("height")
        if width and height:
            self.pixels.observe(int(width) * int(height))
        self.images.labels(
            format=str(info.get("format") or "unknown"),
            modality=str(info.get("modality") or "unknown"),
            view=str(info.get("view_position") or "unknown"),
        ).inc()

    def set_scores(self, scores: dict[str, float], size: int) -> None:
        for component, value in scores.items():
            self.score.labels(component=component).set(value)
        self.size.set(size)
