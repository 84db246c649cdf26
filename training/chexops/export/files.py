"""The files of a chexops export and how they are opened: names, metadata, an ONNX Runtime session.

Imported by the exporter, the Bento store and the service alike (numpy-free, torch-free; `onnx`
only for `read_metadata`, which the service does not use)."""

from __future__ import annotations

from pathlib import Path

FP32_FILE, INT8_FILE, DYNAMIC_FILE = "model.onnx", "model.int8.onnx", "model.dynamic-int8.onnx"
FILES = {"fp32": FP32_FILE, "int8": INT8_FILE}  # what a Bento model holds, by serving precision
INPUT_NAME = "image"


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file, without loading its weights into a session."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def session(path: str | Path, threads: int | None = None, providers: list[str] | None = None):
    """An ONNX Runtime session (CPU unless `providers` says otherwise); with `threads`, that many intra-op
    threads and one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"])
