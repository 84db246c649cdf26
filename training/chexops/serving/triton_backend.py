"""The Triton Python backend's models: what the `model.py` of `chexops triton export --backend python` imports.

Both run the service's own `OnnxModel` (an ONNX Runtime session on the exported file, with its metadata) inside
Triton's `triton_python_backend_stub`:

- `BytesModel`: input `image`, TYPE_STRING, one encoded PNG/JPEG/DICOM per row; decoded and preprocessed
  here by the service's code (`chexops.imaging.decode`, `OnnxModel.preprocess`), as `/predict` does;
- `TensorModel`: input `image`, FP32 C×H×W, already preprocessed (as the ONNX backend takes it).

Output `probabilities`, K per row. Triton's dynamic batcher hands `execute` several requests: all their rows
run as one ONNX Runtime batch. A request whose image cannot be used gets its own error; the others are answered.
Model config parameters: `threads` (ONNX Runtime intra-op threads) and `onnx_file` (in the version folder).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from chexops.core.errors import UserInputError
from chexops.imaging.decode import decode
from chexops.serving.inference import OnnxModel

log = logging.getLogger(__name__)

INPUT, OUTPUT = "image", "probabilities"


def load(args: dict[str, Any]) -> OnnxModel:
    """The model Triton's `initialize(args)` names: its version folder's ONNX file, on the instance's device."""
    config = json.loads(args["model_config"])
    parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
    path = Path(args["model_repository"]) / str(args["model_version"]) / parameters.get("onnx_file", "model.onnx")
    providers = None
    if args.get("model_instance_kind") == "GPU":
        device = int(args.get("model_instance_device_id", 0))
        providers = [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
    return OnnxModel.load(path, threads=int(parameters.get("threads") or 2), providers=providers)


class TensorModel:
    """Preprocessed C×H×W tensors in, probabilities out."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's stub

        self.pb = pb_utils
        self.model = load(args)

    def rows(self, values: np.ndarray) -> np.ndarray:
        """B×C×H×W model input for one request's input tensor."""
        return np.asarray(values, dtype=np.float32)

    def execute(self, requests: list) -> list:
        batches: list[np.ndarray | None] = []
        errors: list[str] = []
        for request in requests:
            try:
                batches.append(self.rows(self.pb.get_input_tensor_by_name(request, INPUT).as_numpy()))
                errors.append("")
            except (UserInputError, ValueError) as exc:
                batches.append(None)
                errors.append(str(exc))
        ready = [b for b in batches if b is not None]
        probs = self.model.probabilities(np.concatenate(ready)) if ready else np.zeros((0, len(self.model.labels)))
        responses, start = [], 0
        for batch, error in zip(batches, errors):
            if batch is None:
                responses.append(self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(error)))
                continue
            rows = probs[start : start + len(batch)].astype(np.float32)
            start += len(batch)
            responses.append(self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(OUTPUT, rows)]))
        return responses

    def finalize(self) -> None:
        self.model = None


class BytesModel(TensorModel):
    """Encoded images in (one per row), decoded and preprocessed as `/predict` does, probabilities out."""

    def rows(self, values: np.ndarray) -> np.ndarray:
        images = [item if isinstance(item, bytes) else bytes(item) for item in np.asarray(values).reshape(-1)]
        return np.stack([self.model.preprocess(decode(data).grey) for data in images]).astype(np.float32)
