"""The exported model in ONNX Runtime: what it says about itself, findings, triage, heatmaps.

Everything a prediction needs comes from the ONNX file's own metadata (`chexops.export.onnx`): labels,
thresholds, the preprocessing spec, the model's name and version, the CAM head. Read through ONNX
Runtime (`get_modelmeta`), so the service needs neither torch nor the `onnx` package.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from chexops.core.labels import DEFAULT_THRESHOLD
from chexops.export.files import INPUT_NAME, session
from chexops.imaging.preprocessing import PreprocessSpec, preprocess_array

log = logging.getLogger(__name__)

LOCALISATION_NOTE = "approximate localisation (class activation map), not a segmentation"
TRAINING_DATA_KINDS = {
    "synthetic": "synthetic images (chexops data synth), no patient's",
    "dataset": "a named radiograph dataset",
    "feedback": "a named dataset and clinicians' feedback",
    "unknown": "not stated in the model's metadata",
}
DEFAULT_INTENDED_USE = (
    "triage support: orders a worklist of adult frontal chest radiographs for a radiologist's read; not a diagnosis"
)
PROBABILITY_NOTE = (
    "a finding's score is the model's output, not a calibrated chance; its threshold is the score above which the "
    "finding is flagged, chosen on held-out data (a 3 % threshold flags scores over 0.03, it is not a 3 % chance)"
)


def _json_object(text: str | None) -> dict | None:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class OnnxModel:
    """One ONNX file in an ONNX Runtime session with its metadata."""

    session: object
    labels: list[str]
    thresholds: dict[str, float]
    spec: PreprocessSpec
    name: str
    version: str
    run_id: str
    data_version: str
    precision: str
    head_weight: np.ndarray
    evaluated: bool = False  # metadata `evaluated`: a gated registry version with its evaluated thresholds
    training_data: dict | None = None  # metadata `training_data`: {kind, description, sources?}
    intended_use: str = ""  # metadata `intended_use`

    @classmethod
    def load(cls, path: str | Path, threads: int = 2, providers: list[str] | None = None) -> "OnnxModel":
        sess = session(path, threads, providers)
        meta = sess.get_modelmeta().custom_metadata_map
        missing = [k for k in ("labels", "thresholds", "preprocessing", "head") if k not in meta]
        if missing:
            raise ValueError(f"{path} is not a chexops export: its metadata lacks {', '.join(missing)}")
        labels = json.loads(meta["labels"])
        thresholds = {k: float(v) for k, v in json.loads(meta["thresholds"]).items()}
        head = json.loads(meta["head"])
        thresholds = {label: thresholds.get(label, DEFAULT_THRESHOLD) for label in labels}  # one for every label
        model = cls(
            session=sess,
            labels=labels,
            thresholds=thresholds,
            spec=PreprocessSpec.from_json(meta["preprocessing"]),
            name=meta.get("model_name", ""),
            version=meta.get("registry_version", ""),
            run_id=meta.get("run_id", ""),
            data_version=meta.get("data_version", ""),
            precision=meta.get("precision", ""),
            head_weight=np.asarray(head["weight"], dtype=np.float32),
            evaluated=meta.get("evaluated") == "true",
            training_data=_json_object(meta.get("training_data")),
            intended_use=meta.get("intended_use", ""),
        )
        log.info(
            "Loaded %s v%s (%s, %d labels, input %d px) with %d intra-op threads on %s",
            model.name,
            model.version,
            model.precision,
            len(labels),
            model.spec.size,
            threads,
            ", ".join(sess.get_providers()),
        )
        return model

    def preprocess(self, grey: np.ndarray) -> np.ndarray:
        return preprocess_array(grey, self.spec)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """B×K probabilities for a B×C×H×W batch."""
        (probs,) = self.session.run(["probabilities"], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return probs

    def probabilities_and_cams(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For one C×H×W input: K probabilities and the K×h×w class-activation maps."""
        probs, features = self.session.run(["probabilities", "features"], {INPUT_NAME: x[None].astype(np.float32)})
        cams = np.einsum("kc,chw->khw", self.head_weight, features[0])
        return probs[0], cams

    def findings(self, probs: np.ndarray) -> list[dict]:
        """One finding per label, in the model's label order."""
        return [
            {
                "label": label,
                "probability": round(float(p), 6),
                "threshold": self.thresholds[label],
                "positive": bool(p >= self.thresholds[label]),
            }
            for label, p in zip(self.labels, probs)
        ]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "data_version": self.data_version,
            "precision": self.precision,
            "labels": self.labels,
            "input_size": self.spec.size,
            "evaluated": self.evaluated,
            **self.banner(),
        }

    def banner(self) -> dict:
        """What the model is, as /model and the page show it: the data it learnt from, what it is for, and
        whether it may be used in a clinic (only a gate-approved model that learnt from a named dataset).
        A model whose metadata does not say where its data came from is not for clinical use either."""
        data = dict(self.training_data or {})
        kind = data.get("kind") if data.get("kind") in TRAINING_DATA_KINDS else "unknown"
        data["kind"] = kind
        data.setdefault("description", TRAINING_DATA_KINDS[kind])
        clinical = kind in ("dataset", "feedback") and self.evaluated
        if kind == "synthetic":
            warning = "Demonstration model: synthetic training data, not for clinical use."
        elif kind == "unknown":
            warning = "Not for clinical use: this model does not say what data it learnt from."
        elif not self.evaluated:
            warning = "Not for clinical use: this model has not passed the quality gate."
        else:
            warning = ""
        return {
            "training_data": data,
            "intended_use": self.intended_use or DEFAULT_INTENDED_USE,
            "clinical_use": clinical,
            "warning": warning,
            "probability_note": PROBABILITY_NOTE,
        }


# --- heatmap -------------------------------------------------------------------------------------------


def _colormap(values: np.ndarray) -> np.ndarray:
    """A blue → cyan → yellow → red map of values in [0, 1], as H×W×3 uint8 (numpy only)."""
    stops = np.array(
        [[0, 0, 128], [0, 160, 255], [0, 230, 200], [255, 230, 0], [255, 60, 0], [200, 0, 0]], dtype=np.float32
    )
    position = np.clip(values, 0, 1) * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    frac = (position - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def heatmap_png(
    grey: np.ndarray, cam: np.ndarray, label: str, probability: float, threshold: float, max_side: int = 768
) -> bytes:
    """The radiograph (grey H×W in [0, 1]) with the label's class-activation map overlaid, a colour
    legend and the words "approximate localisation", as PNG bytes."""
    h, w = grey.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = np.asarray(
        Image.fromarray((np.clip(grey, 0, 1) * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    positive = np.maximum(cam.astype(np.float32), 0)
    peak = float(positive.max())
    heat = positive / peak if peak > 0 else positive
    heat = np.asarray(Image.fromarray(heat, mode="F").resize(size, Image.Resampling.BILINEAR), dtype=np.float32).clip(
        0, 1
    )
    alpha = (0.55 * heat)[..., None]
    blended = base[..., None] * (1 - alpha) + _colormap(heat).astype(np.float32) * alpha
    image = Image.fromarray(blended.clip(0, 255).astype(np.uint8), mode="RGB")

    band = 44
    canvas = Image.new("RGB", (size[0], size[1] + band), (0, 0, 0))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text(
        (6, size[1] + 4), f"{label}: p={probability:.2f} (threshold {threshold:.2f})", fill=(255, 255, 255), font=font
    )
    draw.text((6, size[1] + 22), "approximate localisation (CAM)", fill=(255, 230, 0), font=font)
    legend_w = min(120, size[0] // 3)
    if legend_w >= 10:
        ramp = _colormap(np.tile(np.linspace(0, 1, legend_w, dtype=np.float32), (10, 1)))
        canvas.paste(Image.fromarray(ramp, mode="RGB"), (size[0] - legend_w - 6, size[1] + 8))
        draw.text((size[0] - legend_w - 6, size[1] + 22), "low", fill=(200, 200, 200), font=font)
        draw.text((size[0] - 30, size[1] + 22), "high", fill=(200, 200, 200), font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", pnginfo=None)
    return buffer.getvalue()
