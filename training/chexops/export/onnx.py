"""`chexops export`: a registered (or any trained) model as ONNX, with everything a service needs
inside the file, checked against PyTorch, plus int8 versions and their cost in AUROC and latency.

The ONNX graph has one input, `image` (B×C×H×W float32, the output of
`chexops.imaging.preprocessing.preprocess`; B is dynamic), and two outputs:

- `probabilities` (B×K): sigmoid of the classifier, one column per label;
- `features` (B×C×h×w): the last feature map, for class-activation maps.

The head is linear over the mean-pooled feature map, so a label's CAM is the head's weights applied
to `features`: `cam[b, k] = Σ_c head.weight[k, c] · features[b, c]`, and `mean(cam[b, k]) +
head.bias[k]` is that label's logit. The weights travel as metadata (`head`, JSON), so a service
draws CAMs with numpy alone (`class_activation_maps`).

Metadata (`metadata_props`, all strings; JSON where structured): see `METADATA_KEYS`.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from chexops.core import paths
from chexops.core.errors import GateRefused, UserInputError
from chexops.core.labels import DEFAULT_THRESHOLD_RULE
from chexops.core.names import DEFAULT_MODEL_NAME
from chexops.core.results import Result
from chexops.export.bento import BentoModel, import_onnx
from chexops.export.files import DYNAMIC_FILE, FP32_FILE, INT8_FILE, read_metadata, session
from chexops.imaging.preprocessing import PreprocessSpec, load_image, preprocess

log = logging.getLogger(__name__)

OPSET = 17
EXPORT_FORMAT = "1"
PARITY_TOLERANCE = 1e-4  # max |ONNX Runtime − PyTorch| of the probabilities
FEATURES_TOLERANCE = 1e-4  # of the feature map (the CAMs), relative to its largest magnitude (at least 1)
MAX_INT8_AUROC_DROP = 0.005  # largest mean-AUROC loss of static int8 against fp32 on validation
OUTPUTS = ("probabilities", "features")
METADATA_KEYS = (
    "chexops.format",
    "labels",
    "thresholds",
    "thresholds_rule",
    "preprocessing",
    "model_name",
    "registry_version",
    "run_id",
    "data_version",
    "evaluated",
    "precision",
    "head",
    "outputs",
)
__all__ = [
    "DYNAMIC_FILE",
    "FP32_FILE",
    "INT8_FILE",
    "ExportReport",
    "ExportSummary",
    "build_metadata",
    "export_model",
    "export_onnx",
    "read_metadata",
    "write_metadata",
    "class_activation_maps",
]


# --- the graph -------------------------------------------------------------------------------------


def _exportable(model):
    import torch

    class Exportable(torch.nn.Module):
        """(probabilities, features) from a `chexops.train.models.Classifier`, as exported."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            features = self.inner.feature_map(x)
            return torch.sigmoid(self.inner.head(features.mean(dim=(2, 3)))), features

    return Exportable(model).eval()


def export_onnx(model, spec: PreprocessSpec, path: Path, opset: int = OPSET) -> Path:
    """The classifier as one ONNX file (legacy TorchScript exporter), batch axis dynamic."""
    import warnings

    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, spec.channels, spec.size, spec.size)
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _exportable(model),
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=["image"],
            output_names=list(OUTPUTS),
            dynamic_axes={"image": batch, "probabilities": batch, "features": batch},
        )
    onnx.checker.check_model(str(path))
    return path


def build_metadata(
    *,
    labels: list[str],
    thresholds: dict[str, float],
    rule: str,
    spec: PreprocessSpec,
    model_name: str,
    registry_version: str,
    run_id: str,
    data_version: str,
    head_weight: np.ndarray,
    head_bias: np.ndarray,
    evaluated: bool = False,
    training_data: dict | None = None,
) -> dict[str, str]:
    """`evaluated` is "true" only for a registry version that passed the gate, with its evaluated thresholds;
    `training_data` ({kind, description, sources?}: the config's `data.provenance`) is what the service shows."""
    extra = {"training_data": json.dumps(training_data)} if training_data else {}
    return {
        **extra,
        "chexops.format": EXPORT_FORMAT,
        "labels": json.dumps(labels),
        "thresholds": json.dumps({label: float(thresholds[label]) for label in labels}),
        "thresholds_rule": rule,
        "preprocessing": spec.to_json(),
        "model_name": model_name,
        "registry_version": registry_version,
        "run_id": run_id,
        "data_version": data_version,
        "evaluated": "true" if evaluated else "false",
        "precision": "fp32",
        "head": json.dumps(
            {
                "weight": np.asarray(head_weight, dtype=np.float32).tolist(),
                "bias": np.asarray(head_bias, dtype=np.float32).tolist(),
            }
        ),
        "outputs": json.dumps(
            {
                "probabilities": "B×K sigmoid, columns in `labels` order",
                "features": "B×C×h×w last feature map; CAM[b,k] = Σ_c head.weight[k][c]·features[b,c]",
            }
        ),
    }


def write_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Replace the file's `metadata_props` with `metadata` (and a doc string saying what it is)."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    proto.doc_string = (
        f"chexops {metadata.get('model_name', '')} v{metadata.get('registry_version', '')} "
        f"({metadata.get('precision', '')}), run {metadata.get('run_id', '')}"
    )
    onnx.save(proto, str(path))


def class_activation_maps(features: np.ndarray, head_weight: np.ndarray) -> np.ndarray:
    """B×K×h×w maps from B×C×h×w `features` and the K×C head weights (numpy only, as a service does)."""
    return np.einsum("kc,bchw->bkhw", np.asarray(head_weight, dtype=np.float32), features)


# --- parity ----------------------------------------------------------------------------------------


def torch_outputs(model, x: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    import torch

    wrapped = _exportable(model)
    probs, feats = [], []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            p, f = wrapped(torch.from_numpy(x[start : start + batch_size]))
            probs.append(p.numpy())
            feats.append(f.numpy())
    return {"probabilities": np.concatenate(probs), "features": np.concatenate(feats)}


def real_images(spec: PreprocessSpec) -> tuple[np.ndarray, list[str]]:
    """The team's real radiographs (`shared_data()/real-cxr/*.png`), preprocessed; empty when absent."""
    files = sorted((paths.shared_data() / "real-cxr").glob("*.png"))
    if not files:
        return np.empty((0, spec.channels, spec.size, spec.size), dtype=np.float32), []
    return np.stack([preprocess(load_image(f), spec) for f in files]), [f.name for f in files]


def parity(model, onnx_path: Path, x: np.ndarray, batch_size: int = 16) -> dict[str, float]:
    """Max |ONNX Runtime − PyTorch| over both outputs on `x`, ONNX run at batch sizes > 1."""
    from chexops.export.quantize import run_batches

    ours = run_batches(session(onnx_path), x, batch_size)
    theirs = torch_outputs(model, x)
    return {name: float(np.abs(ours[name] - theirs[name]).max()) if len(x) else 0.0 for name in OUTPUTS}


# --- the command -----------------------------------------------------------------------------------


class ExportReport(Result):
    """An export's figures (its `report.json`): files, parity with PyTorch, each int8 variant's mean AUROC,
    latency and their change against fp32, thresholds, the gate's verdicts ({criterion, value, limit,
    passed}); then the run's artifact URIs (when logged) and the seconds it took."""

    omit_unset = frozenset({"artifacts", "seconds"})

    model: dict[str, str]
    evaluated: bool
    dir: str
    fp32: str
    int8: str
    dynamic_int8: str
    opset: int
    parity_max_abs_diff: float
    parity_features_max_abs_diff: float
    parity_images: dict[str, Any]
    calibration_images: int
    int8_scheme: str
    validation_images: int
    mean_over: list[str]
    fp32_mean_auroc: float
    fp32_latency_ms: float
    latency: dict[str, Any]
    thresholds: dict[str, float]
    thresholds_rule: str
    int8_thresholds: dict[str, float]
    int8_thresholds_rule: str
    data_version: str
    int8_mean_auroc: float
    int8_auroc_delta: float
    int8_latency_ratio: float
    int8_latency_ms: float
    int8_max_abs_prob_diff: float
    dynamic_int8_mean_auroc: float
    dynamic_int8_auroc_delta: float
    dynamic_int8_latency_ratio: float
    dynamic_int8_latency_ms: float
    dynamic_int8_max_abs_prob_diff: float
    sizes_bytes: dict[str, int]
    gate: list[dict[str, Any]]
    passed: bool
    artifacts: dict[str, str] | None = None
    seconds: float | None = None


class ExportSummary(Result):
    """`chexops export`'s result: the report, and the Bento model the files went into (unless --no-bento)."""

    omit_unset = frozenset({"bento_model"})

    export: ExportReport
    bento_model: BentoModel | None = None


def _load_model(payload: dict[str, Any]):
    from chexops.config import ModelConfig
    from chexops.train.models import build_model

    try:
        cfg = ModelConfig(**{**payload["model_config"], "pretrained_weights": None})
        spec = PreprocessSpec.from_dict(payload["preprocessing"])
        model = build_model(cfg, len(payload["labels"]), spec)
        model.load_state_dict(payload["model"])
    except Exception as exc:  # noqa: BLE001 - a checkpoint that does not rebuild is the user's input
        raise UserInputError(f"the checkpoint does not rebuild into its model: {exc}") from None
    return model.eval(), spec


def _training_data(config) -> dict | None:
    """The config's `data.provenance`, with the extra sources (`data.sources`: e.g. clinicians' feedback) named;
    a dataset joined by feedback is kind `feedback`."""
    provenance = config.data.provenance
    if provenance is None:
        return None
    sources = [source.name for source in config.data.sources]
    kind = "feedback" if provenance.kind == "dataset" and sources else provenance.kind
    return {"kind": kind, "description": provenance.description, **({"sources": sources} if sources else {})}


def _splits(payload: dict[str, Any]):
    from chexops.config import Config
    from chexops.data.loading import load_splits

    try:
        config = Config.model_validate(payload["config"])
    except Exception as exc:  # noqa: BLE001
        raise UserInputError(f"the checkpoint's training config is not valid here: {exc}") from None
    if list(config.data.labels) != list(payload["labels"]):
        raise UserInputError(
            "the checkpoint's config labels differ from its label list; the checkpoint is inconsistent."
        )
    return config, load_splits(config)


def _mean_auroc(probs: np.ndarray, split, labels: list[str], over: list[str]) -> float:
    from chexops.train.metrics import auroc_per_label, mean_auroc

    return mean_auroc(auroc_per_label(probs, split.targets, split.mask, labels), over)


def _approved_thresholds(ref, labels: list[str], thresholds: dict[str, float], rule: str, unevaluated: bool) -> bool:
    """Whether this export carries the gate's approval: a registry version that passed the gate, exported
    with the thresholds it was approved with. Anything else needs `--unevaluated` (exit 2 without it)."""
    why = ref.approval()
    if not why and rule == DEFAULT_THRESHOLD_RULE:
        why = f"run {ref.run_id} has no evaluation/thresholds.json"
    if not why and ref.version_tags.get("thresholds"):
        approved = {k: float(v) for k, v in json.loads(ref.version_tags["thresholds"]).items() if v is not None}
        differ = [label for label in labels if label in approved and abs(approved[label] - thresholds[label]) > 1e-9]
        if differ:
            why = (
                f"the run's evaluation/thresholds.json differs from the thresholds version {ref.version} was approved "
                "with "
                f"({', '.join(differ)}): it was evaluated again after registering; register it again"
            )
    if not why:
        return True
    if not unevaluated:
        raise UserInputError(
            f"{ref.uri}: {why}. Export a registry version that passed the gate (chexops evaluate, then "
            "chexops register, then --model models:/NAME@candidate), or pass --unevaluated to export it "
            "anyway, marked `evaluated: false` (the service shows a warning)."
        )
    log.warning(
        "%s: %s; exporting it --unevaluated (metadata evaluated=false, not tied to a registry version).", ref.uri, why
    )
    return False


def int8_thresholds(
    fp32_thresholds: dict[str, float],
    rule: str,
    target_sensitivity: float | None,
    split,
    labels: list[str],
    fp32_probs: np.ndarray,
    int8_probs: np.ndarray,
) -> tuple[dict[str, float], str]:
    """The int8 model's own operating thresholds: the fp32 rule (`chexops evaluate`'s, on validation
    data) applied to int8 probabilities of the same validation split. Kept equal to fp32's where the
    rule cannot choose (one class), when the thresholds were not evaluated, or when fp32's evaluated
    thresholds cannot be reproduced on this validation split (other data than `chexops evaluate` used)."""
    from chexops.evaluation.metrics import RULES, choose_threshold

    if rule not in RULES:
        return dict(fp32_thresholds), f"fp32 ({rule or 'no rule'})"
    target = target_sensitivity if target_sensitivity is not None else 0.9
    mine: dict[str, float] = {}
    for j, label in enumerate(labels):
        keep = split.mask[:, j] > 0
        again = choose_threshold(split.targets[keep, j], fp32_probs[keep, j], rule, target)
        if not math.isnan(again) and abs(again - fp32_thresholds[label]) > 1e-6:
            log.warning(
                "fp32 threshold of %s is %.6f on this validation split, %.6f as evaluated: the data differ, so int8 "
                "keeps the fp32 thresholds",
                label,
                again,
                fp32_thresholds[label],
            )
            return dict(fp32_thresholds), "fp32 (validation data differ from chexops evaluate's)"
        chosen = choose_threshold(split.targets[keep, j], int8_probs[keep, j], rule, target)
        mine[label] = fp32_thresholds[label] if math.isnan(chosen) else float(chosen)
    return mine, f"{rule} on int8 validation probabilities"


def export_gate(
    check: dict[str, float],
    features_scale: float,
    int8_auroc_delta: float,
    max_int8_auroc_drop: float = MAX_INT8_AUROC_DROP,
) -> list[dict[str, Any]]:
    """The export's own gate: fp32 parity with PyTorch (probabilities, and features: the CAMs), and
    the mean-AUROC cost of static int8. Each verdict: criterion, value, limit, passed."""
    features_limit = FEATURES_TOLERANCE * max(1.0, features_scale)
    drop = -int8_auroc_delta if math.isfinite(int8_auroc_delta) else math.inf
    verdicts = [
        ("parity_probabilities", check["probabilities"], PARITY_TOLERANCE),
        ("parity_features", check["features"], features_limit),
        ("int8_mean_auroc_drop", drop, max_int8_auroc_drop),
    ]
    return [
        {"criterion": c, "value": float(v), "limit": float(lim), "passed": bool(v <= lim)} for c, v, lim in verdicts
    ]


def export_model(
    uri: str,
    out: Path | None = None,
    *,
    calibration: int = 256,
    runs: int = 50,
    threads: int = 2,
    name: str | None = None,
    activations: str = "uint8",
    log_to_run: bool = True,
    bento: bool = True,
    unevaluated: bool = False,
    max_int8_auroc_drop: float = MAX_INT8_AUROC_DROP,
) -> ExportSummary:
    """The whole `chexops export`: resolve, rebuild, export, check, quantize, compare, gate, record, import.

    A registry version that passed `chexops register`'s gate is exported with its evaluated thresholds;
    anything else only with `unevaluated` (then marked so). `GateRefused` (exit 3) when parity or the
    int8 AUROC cost fails: nothing is logged to the run or imported."""
    from chexops.export import quantize
    from chexops.imaging import drift
    from chexops.registry import refs as model_ref

    started = time.monotonic()
    ref = model_ref.resolve(uri, default_name=name or DEFAULT_MODEL_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        payload = model_ref.download_checkpoint(ref, Path(tmp) / "checkpoint")
        thresholds, rule, target_sensitivity = model_ref.thresholds(ref, payload["labels"], Path(tmp) / "evaluation")
    labels = list(payload["labels"])
    evaluated = _approved_thresholds(ref, labels, thresholds, rule, unevaluated)
    version = ref.version if evaluated else ""  # an unevaluated export never speaks for a registry version
    out = (
        Path(out)
        if out
        else paths.home() / "exports" / (ref.slug if evaluated else f"{ref.name}-run-{ref.run_id[:12]}-unevaluated")
    )
    model, spec = _load_model(payload)
    config, splits = _splits(payload)
    over = config.eval.mean_labels(labels)
    data_version = str(payload.get("data_version") or splits.fingerprint["data_version"])
    if data_version != splits.fingerprint["data_version"]:
        log.warning(
            "the dataset found here (version %s) is not the one the model was trained on (%s)",
            splits.fingerprint["data_version"],
            data_version,
        )

    # fp32 export with metadata, then parity against PyTorch.
    out.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(model, spec, out / FP32_FILE)
    metadata = build_metadata(
        labels=labels,
        thresholds=thresholds,
        rule=rule,
        spec=spec,
        model_name=ref.name,
        registry_version=version,
        run_id=ref.run_id,
        data_version=data_version,
        head_weight=model.head.weight.detach().numpy(),
        head_bias=model.head.bias.detach().numpy(),
        evaluated=evaluated,
        training_data=_training_data(config),
    )
    write_metadata(fp32, metadata)
    log.info("Preprocessing %d validation images", len(splits.val))
    val_x = quantize.split_inputs(splits.val, spec)
    real_x, real_names = real_images(spec)
    both = np.concatenate([val_x, real_x])
    check = parity(model, fp32, both)
    features_scale = float(np.abs(torch_outputs(model, both[:64])["features"]).max()) if len(both) else 1.0
    log.info(
        "Parity on %d validation + %d real images: max |ΔP| %.2e, max |Δfeatures| %.2e (features up to %.2f)",
        len(val_x),
        len(real_x),
        check["probabilities"],
        check["features"],
        features_scale,
    )

    # int8: static QDQ calibrated on real training images; dynamic for comparison.
    calib_x = quantize.split_inputs(splits.train, spec, limit=calibration, seed=config.seed)
    metadata[drift.REFERENCE_KEY] = (
        drift.reference_json(  # the training reference a service's drift score compares with
            calib_x, quantize.run_batches(session(fp32), calib_x)["probabilities"], spec, labels
        )
    )
    write_metadata(fp32, metadata)
    log.info("Static QDQ int8, calibrated on %d training images", len(calib_x))
    int8 = quantize.quantize_static_qdq(fp32, out / INT8_FILE, calib_x, activation=activations)
    dynamic = quantize.quantize_dynamic_int8(fp32, out / DYNAMIC_FILE)
    write_metadata(dynamic, {**metadata, "precision": "int8-dynamic"})

    variants = {"fp32": fp32, "int8": int8, "dynamic_int8": dynamic}
    compared: dict[str, dict[str, float]] = {}
    val_probs: dict[str, np.ndarray] = {}
    for key, path in variants.items():
        probs = val_probs[key] = quantize.run_batches(session(path), val_x)["probabilities"]
        compared[key] = {
            "mean_auroc": _mean_auroc(probs, splits.val, labels, over),
            "max_abs_prob_diff": float(np.abs(probs - val_probs["fp32"]).max()),
            "latency_ms": quantize.latency_ms(path, val_x[:1], runs=runs, threads=threads),
            "size_bytes": path.stat().st_size,
        }
        log.info(
            "%-12s mean AUROC %.4f, latency %.2f ms (batch 1, %d threads), %.1f kB",
            key,
            compared[key]["mean_auroc"],
            compared[key]["latency_ms"],
            threads,
            compared[key]["size_bytes"] / 1024,
        )
    int8_thr, int8_rule = int8_thresholds(
        thresholds, rule, target_sensitivity, splits.val, labels, val_probs["fp32"], val_probs["int8"]
    )
    write_metadata(
        int8,
        {**metadata, "precision": "int8-static-qdq", "thresholds": json.dumps(int8_thr), "thresholds_rule": int8_rule},
    )

    fp = compared["fp32"]
    int8_figures: dict[str, float] = {}
    for key in ("int8", "dynamic_int8"):
        int8_figures.update(
            {
                f"{key}_mean_auroc": compared[key]["mean_auroc"],
                f"{key}_auroc_delta": compared[key]["mean_auroc"] - fp["mean_auroc"],
                f"{key}_latency_ratio": compared[key]["latency_ms"] / fp["latency_ms"],
                f"{key}_latency_ms": compared[key]["latency_ms"],
                f"{key}_max_abs_prob_diff": compared[key]["max_abs_prob_diff"],
            }
        )
    gate = export_gate(check, features_scale, int8_figures["int8_auroc_delta"], max_int8_auroc_drop)
    result = ExportReport(
        model=ref.to_dict(),
        evaluated=evaluated,
        dir=str(out),
        fp32=str(fp32),
        int8=str(int8),
        dynamic_int8=str(dynamic),
        opset=OPSET,
        parity_max_abs_diff=check["probabilities"],
        parity_features_max_abs_diff=check["features"],
        parity_images={"validation": len(val_x), "real_cxr": real_names},
        calibration_images=len(calib_x),
        int8_scheme=f"static QDQ, {activations} activations (MinMax), int8 per-channel weights",
        validation_images=len(val_x),
        mean_over=over,
        fp32_mean_auroc=fp["mean_auroc"],
        fp32_latency_ms=fp["latency_ms"],
        latency={"batch": 1, "intra_op_threads": threads, "runs": runs, "statistic": "median"},
        thresholds=thresholds,
        thresholds_rule=rule,
        int8_thresholds=int8_thr,
        int8_thresholds_rule=int8_rule,
        data_version=data_version,
        **int8_figures,
        sizes_bytes={k: v["size_bytes"] for k, v in compared.items()},
        gate=gate,
        passed=all(v["passed"] for v in gate),
    )
    (out / "report.json").write_text(json.dumps(result.model_dump(mode="json"), indent=2, default=str) + "\n")
    if not result.passed:
        failed = "; ".join(
            f"{v['criterion']} {v['value']:.3g} > {v['limit']:.3g}" for v in result.gate if not v["passed"]
        )
        raise GateRefused(
            f"the export gate refused {ref.uri}: {failed} (report: {out / 'report.json'}); nothing was logged "
            "to the run or imported into the Bento store."
        )
    if log_to_run:
        result.artifacts = _record(ref, out, result)
    bento_model = import_onnx(fp32, int8, ref, result.model_dump(mode="json")) if bento else None
    result.seconds = round(time.monotonic() - started, 1)
    summary = ExportSummary(export=result)
    if bento_model is not None:
        summary.bento_model = bento_model
    return summary


def _record(ref, out: Path, result: ExportReport) -> dict[str, str]:
    """The ONNX files and report into the training run (`export/`; `export-unevaluated/` for an
    --unevaluated export, so it never shadows the approved one); their URIs and sha256 as run tags,
    and as registry version tags for an approved export."""
    from chexops.core.files import sha256_file

    folder = "export" if result.evaluated else "export-unevaluated"
    from chexops.tracking import mlflow_client

    c = mlflow_client()
    for f in (FP32_FILE, INT8_FILE, "report.json"):
        c.log_artifact(ref.run_id, str(out / f), folder)
    uris = {
        "fp32": f"runs:/{ref.run_id}/{folder}/{FP32_FILE}",
        "int8": f"runs:/{ref.run_id}/{folder}/{INT8_FILE}",
        "report": f"runs:/{ref.run_id}/{folder}/report.json",
    }
    tags = {
        "export.fp32_uri": uris["fp32"],
        "export.int8_uri": uris["int8"],
        "export.fp32_path": result.fp32,
        "export.int8_path": result.int8,
        "export.registry_version": ref.version if result.evaluated else "none",
        "export.int8_auroc_delta": f"{result.int8_auroc_delta:.6f}",
        "export.int8_latency_ratio": f"{result.int8_latency_ratio:.4f}",
        "export.fp32_sha256": sha256_file(out / FP32_FILE),
        "export.int8_sha256": sha256_file(out / INT8_FILE),
        "export.evaluated": "true" if result.evaluated else "false",
    }
    prefix = "export." if result.evaluated else "export_unevaluated."
    for key, value in tags.items():
        c.set_tag(ref.run_id, prefix + key.removeprefix("export."), value)
    if ref.version and result.evaluated:
        for key, value in tags.items():
            c.set_model_version_tag(ref.name, ref.version, key, value)
    return uris
