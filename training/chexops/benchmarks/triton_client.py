"""The benchmark's Triton path: the same image through a running Triton Inference Server holding the
repository `chexops triton export` wrote (gRPC, tritonclient), decoded and preprocessed in the client
with the service's own code, as the bare path does.

    chexops triton export --model chexops-cxr:v3 --out DIR && tritonserver --model-repository DIR &
    python -m chexops.benchmarks.serve_bench --start --model chexops-cxr:v3 --image IMAGE \
        --triton 127.0.0.1:8001 --triton-model chexops-cxr

`--triton-local` starts the Python-backend repository here instead (`chexops triton serve`'s server) and sends
the encoded image (`bytes_function`, HTTP and gRPC) and the preprocessed tensor (`infer_function`).

(The ONNX Runtime backend needs a Triton of yours, e.g. NVIDIA's image: the `tritonserver` that
`nvidia-pytriton` ships here has the Python backend only, which `chexops triton serve` runs; bentos/README.md.)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from chexops.benchmarks import concurrent_calls, cpu_ms_per_call, timed_calls


def infer_function(url: str, model_name: str, onnx_path: Path, data: bytes) -> Callable[[], Any]:
    """A callable that decodes, preprocesses and infers `data` once through Triton (one gRPC client per thread)."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from chexops.imaging.decode import decode
    from chexops.serving.inference import OnnxModel

    model = OnnxModel.load(onnx_path, threads=1)  # its metadata (preprocessing spec), not its session
    local = threading.local()

    def once() -> Any:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = grpcclient.InferenceServerClient(url=url)
        x = model.preprocess(decode(data).grey)[None].astype(np.float32)
        tensor = grpcclient.InferInput("image", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(model_name, [tensor], outputs=[grpcclient.InferRequestedOutput("probabilities")])
        return result.as_numpy("probabilities")

    return once


def bytes_function(url: str, protocol: str, model_name: str, data: bytes) -> Callable[[], Any]:
    """A callable that sends the encoded image `data` once to a Python-backend `NAME-bytes` model (decoded and
    preprocessed inside Triton) over `protocol` (http or grpc; one client per thread)."""
    import importlib

    import numpy as np

    module = importlib.import_module(f"tritonclient.{protocol}")
    payload = np.array([[data]], dtype=object)
    local = threading.local()

    def once() -> Any:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = module.InferenceServerClient(url=url)
        tensor = module.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(payload)
        return client.infer(model_name, [tensor]).as_numpy("probabilities")

    return once


def measure(
    once: Callable[[], Any],
    runs: int,
    warmup: int,
    concurrency: int,
    requests: int,
    stats: Callable[[list[float]], dict],
    pid: int | None = None,
) -> dict[str, Any]:
    """Sequential calls, then concurrent ones; with `pid`, the server's CPU-ms per sequential call."""
    times, cpu_ms = cpu_ms_per_call(pid, runs + warmup, lambda: timed_calls(once, runs, warmup))
    sequential = {**stats(times), **({"server_cpu_ms_per_request": cpu_ms} if pid else {})}
    concurrent_times, wall = concurrent_calls(once, concurrency, requests)
    return {
        "sequential": sequential,
        "concurrent": {
            **stats(concurrent_times),
            "concurrency": concurrency,
            "wall_s": round(wall, 3),
            "requests_per_s": round(len(concurrent_times) / wall, 2),
        },
    }
