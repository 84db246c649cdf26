"""The bare path the service is measured against: decode + preprocess + `session.run` of one image in this
process, through `chexops.serving.inference.OnnxModel` (the service's own code), sequentially and from
concurrent threads sharing the one session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from chexops.benchmarks import concurrent_calls, cpu_ms_per_call, stats, timed_calls


def model_file(tag: str, precision: str) -> Path:
    """The ONNX file the service loads for `tag` at `precision`, from the Bento model store."""
    from chexops.core.paths import bentoml_home
    from chexops.export.files import FILES

    bentoml_home()
    import bentoml

    return Path(bentoml.models.get(tag).path_of(FILES[precision]))


def bare(
    onnx_path: Path, data: bytes, threads: int, runs: int, warmup: int, concurrency: int = 1, requests: int = 0
) -> dict[str, Any]:
    """decode + preprocess + session.run of one image, `runs` times, in this process (and `requests`
    times from `concurrency` threads)."""
    from chexops.imaging.decode import decode
    from chexops.serving.inference import OnnxModel

    model = OnnxModel.load(onnx_path, threads=threads)

    def once() -> np.ndarray:
        x = model.preprocess(decode(data).grey)
        return model.probabilities(x[None])

    times, cpu_ms = cpu_ms_per_call(None, runs + warmup, lambda: timed_calls(once, runs, warmup))
    result = {
        **stats(times),
        "cpu_ms_per_request": cpu_ms,
        "model": f"{model.name} v{model.version}",
        "precision": model.precision or "fp32",
        "input_size": model.spec.size,
        "file": str(onnx_path),
    }
    result["concurrent"] = bare_concurrent(once, concurrency, requests or runs)
    return result


def bare_concurrent(once, concurrency: int, requests: int) -> dict[str, Any]:
    """`requests` calls of `once` from `concurrency` threads sharing the session: requests/s."""
    times, wall = concurrent_calls(once, concurrency, requests)
    return {
        **stats(times),
        "concurrency": concurrency,
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(times) / wall, 2),
    }
