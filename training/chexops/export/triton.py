"""`chexops triton export`: an exported model as a Triton Inference Server model repository.

    chexops triton export --out DIR [--model chexops-cxr:v3 | --onnx model.onnx] [--precision fp32|int8]

writes

    DIR/NAME/1/model.onnx         the ONNX file (chexops metadata inside)
    DIR/NAME/config.pbtxt         platform onnxruntime_onnx, CPU instances (works on any Triton)
    DIR/NAME/configs/gpu.pbtxt    the GPU variant: `tritonserver --model-config-name=gpu`
    DIR/NAME/labels.txt           one label per line (Triton's classification extension)

Input/output names, data types and dims come from the ONNX file itself (a dynamic first dimension
becomes Triton's batch dimension, with dynamic batching); the labels from its chexops metadata.
The service's preprocessing (chexops.imaging.preprocessing, spec in the metadata) stays with the client:
Triton receives the normalised C×H×W tensor, as `/infer` does. See bentos/README.md for running it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from chexops.core.errors import UserInputError
from chexops.core.results import Result

log = logging.getLogger(__name__)

DATA_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int8)": "TYPE_INT8",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(bool)": "TYPE_BOOL",
}
CLASSIFIED_OUTPUT = "probabilities"
PREFERRED_BATCH_SIZES = (4, 8, 16, 32)
# The dynamic batcher's defaults, per backend (docs/benchmarks.md, "Batch sizes"). On CPU a batch costs its
# images' time (DenseNet-121: 19 images/s at batch 1 and 18 at 64, one thread), so waiting for a batch never paid:
# the Python backend batches only what is already queued (delay 0), at most 16 (one execution under 1 s at 1 CPU).
# A GPU's batch of 16 costs about one image's time, so the ONNX Runtime backend's repository (users' Tritons, GPU
# variant) waits up to 2 ms for one; that figure is Triton's own guidance, not measured here (no GPU).
PYTHON_BATCHING = (16, 0)  # (max_batch_size, max_queue_delay_microseconds)
ONNX_BATCHING = (64, 2000)


class TritonRepository(Result):
    """What `chexops triton export` wrote: the model's folder in the repository, its tensors ({name, data_type,
    shape}), how many labels, its two configs and the preprocessing spec from the ONNX metadata (None: none there)."""

    repository: str
    model: str
    dir: str
    onnx: str
    max_batch_size: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    labels: int
    configs: dict[str, str]
    preprocessing: dict[str, Any] | None


def tensors(onnx_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """The ONNX file's inputs and outputs ({name, data_type, shape}; a dynamic dim is -1) and its metadata."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors for a file it cannot load
        raise UserInputError(f"{onnx_path} is not an ONNX model ONNX Runtime can load: {exc}") from None

    def describe(args) -> list[dict[str, Any]]:
        out = []
        for arg in args:
            if arg.type not in DATA_TYPES:
                raise UserInputError(
                    f"{onnx_path}: tensor {arg.name} has type {arg.type}, which Triton's config cannot name here."
                )
            out.append(
                {
                    "name": arg.name,
                    "data_type": DATA_TYPES[arg.type],
                    "shape": [d if isinstance(d, int) and d > 0 else -1 for d in arg.shape],
                }
            )
        return out

    return describe(session.get_inputs()), describe(session.get_outputs()), session.get_modelmeta().custom_metadata_map


def _dims(values: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _dynamic_batching(max_batch_size: int, queue_delay_us: int) -> str:
    preferred = [b for b in PREFERRED_BATCH_SIZES if b <= max_batch_size]
    return (
        f"dynamic_batching {{\n  preferred_batch_size: {_dims(preferred)}\n"
        f"  max_queue_delay_microseconds: {queue_delay_us}\n}}"
    )


def _instance_group(kind: str, count: int, gpus: list[int] | None = None) -> str:
    """One instance group; `gpus` (KIND_GPU only): the devices it runs on [default: all], `count` on each."""
    devices = f"\n    gpus: {_dims(gpus)}" if gpus and kind == "KIND_GPU" else ""
    return f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}{devices}\n  }}\n]"


def _parameters(values: dict[str, str]) -> str:
    """The model's `parameters` (string values): read by its backend."""
    items = [f'  {{\n    key: "{k}"\n    value: {{ string_value: "{v}" }}\n  }}' for k, v in values.items()]
    return "parameters [\n" + ",\n".join(items) + "\n]"


def _clear(model_dir: Path, overwrite: bool) -> None:
    if model_dir.exists():
        if not overwrite:
            raise UserInputError(f"{model_dir} exists: choose another --out or --name, or pass --overwrite.")
        shutil.rmtree(model_dir)


def config_text(
    name: str,
    inputs: list[dict],
    outputs: list[dict],
    max_batch_size: int,
    kind: str,
    count: int,
    threads: int,
    queue_delay_us: int,
    labels: bool,
    gpus: list[int] | None = None,
) -> str:
    """config.pbtxt (protobuf text format of inference.ModelConfig) for the ONNX Runtime backend."""
    batched = max_batch_size > 0

    def tensor(t: dict, is_output: bool) -> str:
        dims = t["shape"][1:] if batched else t["shape"]
        extra = '\n    label_filename: "labels.txt"' if is_output and labels and t["name"] == CLASSIFIED_OUTPUT else ""
        return f'  {{\n    name: "{t["name"]}"\n    data_type: {t["data_type"]}\n    dims: {_dims(dims)}{extra}\n  }}'

    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(tensor(t, False) for t in inputs) + "\n]",
        "output [\n" + ",\n".join(tensor(t, True) for t in outputs) + "\n]",
    ]
    if batched:
        lines.append(_dynamic_batching(max_batch_size, queue_delay_us))
    lines.append(_instance_group(kind, count, gpus))
    if kind == "KIND_CPU":  # the ONNX Runtime backend's own thread settings (as the service's CHEXOPS_THREADS)
        lines.append(_parameters({"intra_op_thread_count": str(threads), "inter_op_thread_count": "1"}))
    return "\n".join(lines) + "\n"


def write_repository(
    onnx_path: Path,
    out: Path,
    name: str = "",
    max_batch_size: int = ONNX_BATCHING[0],
    cpu_instances: int = 1,
    gpu_instances: int = 1,
    threads: int = 2,
    queue_delay_us: int = ONNX_BATCHING[1],
    overwrite: bool = False,
    gpus: list[int] | None = None,
) -> TritonRepository:
    """A Triton model repository for one ONNX file."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserInputError(f"no ONNX file at {onnx_path}.")
    inputs, outputs, meta = tensors(onnx_path)
    name = name or meta.get("model_name") or onnx_path.stem
    labels = json.loads(meta["labels"]) if meta.get("labels") else []
    dynamic_batch = all(t["shape"] and t["shape"][0] == -1 for t in inputs + outputs)
    if max_batch_size and not dynamic_batch:
        log.warning("%s has a fixed first dimension: no Triton batching (max_batch_size 0)", onnx_path)
        max_batch_size = 0
    model_dir = out / name
    _clear(model_dir, overwrite)
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "configs").mkdir()
    shutil.copyfile(onnx_path, model_dir / "1" / "model.onnx")
    has_labels = bool(labels) and any(t["name"] == CLASSIFIED_OUTPUT for t in outputs)
    if has_labels:
        (model_dir / "labels.txt").write_text("\n".join(labels) + "\n")
    common = dict(
        name=name,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        threads=threads,
        queue_delay_us=queue_delay_us,
        labels=has_labels,
    )
    (model_dir / "config.pbtxt").write_text(config_text(kind="KIND_CPU", count=cpu_instances, **common))
    (model_dir / "configs" / "gpu.pbtxt").write_text(
        config_text(kind="KIND_GPU", count=gpu_instances, gpus=gpus, **common)
    )
    log.info(
        "Wrote the Triton model %s to %s (inputs %s, outputs %s, max batch %d)",
        name,
        model_dir,
        [t["name"] for t in inputs],
        [t["name"] for t in outputs],
        max_batch_size,
    )
    return TritonRepository(
        repository=str(out),
        model=name,
        dir=str(model_dir),
        onnx=str(onnx_path),
        max_batch_size=max_batch_size,
        inputs=inputs,
        outputs=outputs,
        labels=len(labels),
        configs={"cpu": str(model_dir / "config.pbtxt"), "gpu": str(model_dir / "configs" / "gpu.pbtxt")},
        preprocessing=json.loads(meta["preprocessing"]) if meta.get("preprocessing") else None,
    )


def bento_model_file(reference: str, precision: str) -> Path:
    """The ONNX file for `precision` of the Bento model `chexops serve` would serve for `reference` (a
    registry reference or an exact Bento tag, resolved and checked the same way)."""
    from chexops.export.bento import serving_tag
    from chexops.export.files import FILES

    tag = serving_tag(reference).tag
    import bentoml

    return Path(bentoml.models.get(tag).path_of(FILES[precision]))


# --- the Python backend (chexops triton export --backend python) ------------------------------------------

PYTHON_VARIANTS = {  # model-name suffix: (the class model.py imports, the input's data type, what one row is)
    "bytes": ("BytesModel", "TYPE_STRING", "one encoded PNG, JPEG or DICOM file"),
    "tensor": ("TensorModel", "TYPE_FP32", "a preprocessed C×H×W tensor"),
}
MODEL_PY = '''"""Triton Python backend: {name}, {row} per row in, probabilities out.

Written by `chexops triton export --backend python`. The code is chexops' own, imported, not copied
(chexops.serving.triton_backend): serve this repository with `chexops triton serve --repository DIR`, which
runs the stub in a Python environment of its own and names chexops' folder in CHEXOPS_PYTHONPATH (the stub's
embedded Python runs isolated: it ignores PYTHONPATH)."""

import os
import sys

if os.environ.get("CHEXOPS_PYTHONPATH"):
    sys.path.insert(0, os.environ["CHEXOPS_PYTHONPATH"])

from chexops.serving.triton_backend import {cls} as TritonPythonModel  # noqa: E402, F401
'''


class TritonPythonRepository(Result):
    """What `chexops triton export --backend python` wrote: two models on one ONNX file ({variant: name}:
    `bytes`, encoded images in; `tensor`, preprocessed tensors in), their folders, their instance group."""

    repository: str
    backend: str = "python"
    models: dict[str, str]
    dirs: dict[str, str]
    onnx: str
    max_batch_size: int
    input_shape: list[int]
    labels: int
    instance_group: dict[str, Any]
    threads: int
    preferred_batch_sizes: list[int]
    queue_delay_us: int
    preprocessing: dict[str, Any] | None


def python_config_text(
    name: str,
    data_type: str,
    dims: list[int],
    classes: int,
    max_batch_size: int,
    group: str,
    threads: int,
    queue_delay_us: int,
) -> str:
    """config.pbtxt for one Python-backend model: `image` in, `probabilities` out (labels.txt), batched."""
    lines = [
        f'name: "{name}"',
        'backend: "python"',
        f"max_batch_size: {max_batch_size}",
        f'input [\n  {{\n    name: "image"\n    data_type: {data_type}\n    dims: {_dims(dims)}\n  }}\n]',
        f'output [\n  {{\n    name: "{CLASSIFIED_OUTPUT}"\n    data_type: TYPE_FP32\n    dims: [ {classes} ]\n'
        '    label_filename: "labels.txt"\n  }\n]',
    ]
    if max_batch_size:
        lines.append(_dynamic_batching(max_batch_size, queue_delay_us))
    lines.append(group)
    lines.append(_parameters({"threads": str(threads), "onnx_file": "model.onnx"}))
    return "\n".join(lines) + "\n"


def write_python_repository(
    onnx_path: Path,
    out: Path,
    name: str = "",
    max_batch_size: int = PYTHON_BATCHING[0],
    instances: int = 1,
    gpu: bool = False,
    gpus: list[int] | None = None,
    threads: int = 2,
    queue_delay_us: int = PYTHON_BATCHING[1],
    overwrite: bool = False,
) -> TritonPythonRepository:
    """A Python-backend repository for one chexops ONNX file: `NAME-bytes` and `NAME-tensor`, each running the
    service's `OnnxModel` on its own copy of the file; KIND_CPU instances, or KIND_GPU (`gpus`: which; all by
    default) with `gpu`."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserInputError(f"no ONNX file at {onnx_path}.")
    inputs, outputs, meta = tensors(onnx_path)
    missing = [key for key in ("labels", "preprocessing", "thresholds", "head") if key not in meta]
    if missing:
        raise UserInputError(f"{onnx_path} is not a chexops export (its metadata lacks {', '.join(missing)}).")
    labels = json.loads(meta["labels"])
    name = name or meta.get("model_name") or onnx_path.stem
    shape = inputs[0]["shape"]
    if shape[0] != -1:
        raise UserInputError(f"{onnx_path} has a fixed batch dimension ({shape}): the Python backend batches rows.")
    dirs = {variant: out / f"{name}-{variant}" for variant in PYTHON_VARIANTS}
    for model_dir in dirs.values():
        _clear(model_dir, overwrite)
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    group = _instance_group(kind, instances, gpus)
    for variant, (cls, data_type, row) in PYTHON_VARIANTS.items():
        model_dir = dirs[variant]
        (model_dir / "1").mkdir(parents=True)
        shutil.copyfile(onnx_path, model_dir / "1" / "model.onnx")
        (model_dir / "1" / "model.py").write_text(MODEL_PY.format(name=model_dir.name, row=row, cls=cls))
        (model_dir / "labels.txt").write_text("\n".join(labels) + "\n")
        dims = [1] if data_type == "TYPE_STRING" else shape[1:]
        (model_dir / "config.pbtxt").write_text(
            python_config_text(
                model_dir.name, data_type, dims, len(labels), max_batch_size, group, threads, queue_delay_us
            )
        )
    log.info("Wrote the Triton Python-backend models %s to %s (%s)", [d.name for d in dirs.values()], out, kind)
    return TritonPythonRepository(
        repository=str(out),
        models={variant: d.name for variant, d in dirs.items()},
        dirs={variant: str(d) for variant, d in dirs.items()},
        onnx=str(onnx_path),
        max_batch_size=max_batch_size,
        input_shape=shape[1:],
        labels=len(labels),
        instance_group={"kind": kind, "count": instances, **({"gpus": gpus} if gpus and gpu else {})},
        threads=threads,
        preferred_batch_sizes=[b for b in PREFERRED_BATCH_SIZES if b <= max_batch_size] if max_batch_size else [],
        queue_delay_us=queue_delay_us,
        preprocessing=json.loads(meta["preprocessing"]),
    )
