"""What `serve_bench` reports besides its measurements: the machine, each path's ratios to the bare session,
and the Markdown rows of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    import onnxruntime

    cpu, isa = platform.processor() or "", []
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), cpu)
        flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags]
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    try:  # the version without importing bentoml (its settings are read at import: BENTOML_HOME may change later)
        from importlib.metadata import version

        bentoml_version = version("bentoml")
    except Exception:  # noqa: BLE001 - informational only
        bentoml_version = ""
    return {
        "cpu": cpu,
        "isa": isa,
        "logical_cpus": os.cpu_count(),
        "load_average_at_start": load,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "bentoml": bentoml_version,
        "platform": platform.platform(),
    }


def vs_bare(service: dict[str, Any], bare_result: dict[str, Any]) -> dict[str, float]:
    """The service's sequential p50 and p95 over the bare session's, and its throughput at concurrency over the bare
    one's."""
    ratios = {q: round(service["sequential"][f"{q}_ms"] / bare_result[f"{q}_ms"], 3) for q in ("p50", "p95")}
    throughput = service["concurrent"]["requests_per_s"] / bare_result["concurrent"]["requests_per_s"]
    return {**ratios, "throughput": round(throughput, 3)}


PATHS = {
    "fastapi_uvicorn": "FastAPI + uvicorn baseline (same session and preprocessing)",
    "triton_grpc": "Triton (ONNX Runtime backend, gRPC; decode + preprocess in the client)",
    "triton_python_bytes_http": "Triton here (Python backend, image bytes in, HTTP; decode + preprocess in Triton)",
    "triton_python_bytes_grpc": "Triton here (Python backend, image bytes in, gRPC; decode + preprocess in Triton)",
    "triton_python_tensor_grpc": "Triton here (Python backend, tensor in, gRPC; decode + preprocess in the client)",
}


def _cpu(ms: float | None) -> str:
    return "—" if ms is None else f"{ms:.1f}"


def markdown(result: dict[str, Any]) -> str:
    b = result["bare"]
    bc = b["concurrent"]
    at = result["concurrency"]
    rows = [
        f"| path | p50 (ms) | p95 (ms) | p50 vs bare | req/s at c={at} (vs bare) | p50 / p95 at c={at} (ms) | failed "
        "| server CPU-ms per request |",
        "|---|---|---|---|---|---|---|---|",
        f"| bare ONNX Runtime (decode + preprocess + run) | {b['p50_ms']:.2f} | {b['p95_ms']:.2f} | 1.00× | "
        f"{bc['requests_per_s']:.1f} | {bc['p50_ms']:.1f} / {bc['p95_ms']:.1f} | — | "
        f"{_cpu(b.get('cpu_ms_per_request'))} |",
    ]
    for name, value in result["services"].items():
        s, c, ratio = value["sequential"], value["concurrent"], value["vs_bare"]
        label = PATHS.get(name, f"`/predict`, {name.replace('_', ' ')}")
        rows.append(
            f"| {label} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {ratio['p50']:.2f}× | "
            f"{c['requests_per_s']:.1f} ({ratio['throughput']:.2f}×) | "
            f"{c['p50_ms']:.1f} / {c['p95_ms']:.1f} | "
            f"{s['errors']['failed'] + c['errors']['failed']} of "
            f"{s['n'] + s['errors']['failed'] + c['n'] + c['errors']['failed']} | "
            f"{_cpu(s.get('server_cpu_ms_per_request'))} |"
        )
    return "\n".join(rows)
