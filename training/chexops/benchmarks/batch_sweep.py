"""Which batch sizes pay on this machine: the model's ONNX Runtime session at batch 1..64 (ms per batch,
images/s), then Triton's dynamic batcher (max batch, queue delay) under concurrent clients, so that the
defaults of `chexops triton export` and the service's adaptive batching are chosen by measurement.

    # the session alone, one intra-op thread on CPU 0 (a 1-CPU box), fp32 and int8
    python -m chexops.benchmarks.batch_sweep --architecture densenet121 --size 224 --threads 1 --cpus 0
    # and Triton's batcher (Python backend, tensors in over gRPC) at concurrency 16, clients on CPU 1
    python -m chexops.benchmarks.batch_sweep --architecture densenet121 --size 224 --threads 1 --cpus 0 \
        --client-cpus 1 --triton --concurrency 16
    # a GPU (ONNX Runtime's CUDA provider, where this onnxruntime has it): batch 1..64
    python -m chexops.benchmarks.batch_sweep --architecture densenet121 --size 224 --provider cuda

Prints one JSON object; `--markdown` also prints the tables for docs/benchmarks.md on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from chexops.benchmarks import emit, stats, timed_calls

log = logging.getLogger("chexops.benchmarks.batch_sweep")

BATCHES = (1, 2, 4, 8, 16, 32, 64)
# (max_batch_size, max_queue_delay_microseconds): batch 1 (no batching), then batchers of growing patience
TRITON_CONFIGS = ((1, 0), (4, 0), (4, 2000), (16, 0), (16, 2000), (16, 10000))
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def session_sweep(onnx: Path, threads: int, provider: str, batches: list[int], seconds: float) -> list[dict]:
    """ms per batch and images/s of `session.run` for each batch size (about `seconds` of runs each)."""
    from chexops.serving.inference import OnnxModel

    model = OnnxModel.load(onnx, threads=threads, providers=PROVIDERS[provider])
    used = model.session.get_providers()[0]
    if provider == "cuda" and used != "CUDAExecutionProvider":
        raise SystemExit("--provider cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    size = model.spec.size
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).normal(0, 1, (batch, model.spec.channels, size, size)).astype(np.float32)
        once = lambda x=x: model.probabilities(x)  # noqa: E731
        first = timed_calls(once, runs=1, warmup=1)[0]
        runs = max(3, min(200, int(seconds / max(first, 1e-4))))
        timed = stats(timed_calls(once, runs=runs, warmup=1))
        rows.append(
            {
                "batch": batch,
                "runs": runs,
                "ms_per_batch_p50": timed["p50_ms"],
                "ms_per_image": round(timed["p50_ms"] / batch, 3),
                "images_per_s": round(1000 * batch / timed["p50_ms"], 2),
            }
        )
        log.info("  batch %2d: %.1f ms per batch, %.1f images/s", batch, timed["p50_ms"], rows[-1]["images_per_s"])
    return rows


def triton_sweep(args, onnx: Path) -> list[dict]:
    """Triton (Python backend, tensor in over gRPC) for each (max batch, queue delay): req/s, p50 and p95 at
    `--concurrency`, and the batch sizes its batcher formed (Triton's own statistics)."""
    from chexops.benchmarks.triton_client import infer_function, measure
    from chexops.core.processes import free_port
    from chexops.export.triton import write_python_repository
    from chexops.export.triton_server import TritonServer

    data = Path(args.image).read_bytes()
    rows = []
    for max_batch, delay in args.configs:
        with tempfile.TemporaryDirectory(prefix="batch-sweep-") as tmp:
            repository = Path(tmp) / "repository"
            written = write_python_repository(
                onnx, repository, max_batch_size=max_batch, threads=args.threads, queue_delay_us=delay
            )
            ports = [free_port() for _ in range(3)]
            preexec = (lambda: os.sched_setaffinity(0, args.cpus)) if args.cpus else None
            with TritonServer(repository, *ports, Path(tmp) / "tritonserver.log", preexec=preexec):
                name = written.models["tensor"]
                once = infer_function(f"127.0.0.1:{ports[1]}", name, onnx, data)
                measured = measure(once, 3, args.warmup, args.concurrency, args.requests, stats)["concurrent"]
                batches = _formed_batches(f"127.0.0.1:{ports[1]}", name)
        row = {
            "max_batch_size": max_batch,
            "queue_delay_us": delay,
            "requests_per_s": measured["requests_per_s"],
            "p50_ms": measured["p50_ms"],
            "p95_ms": measured["p95_ms"],
            "batches_formed": batches,
        }
        log.info("  Triton max batch %d, delay %d us: %s", max_batch, delay, row)
        rows.append(row)
    return rows


def _formed_batches(url: str, model: str) -> dict[str, int]:
    """batch size → executions, from Triton's statistics of `model`."""
    import tritonclient.grpc as grpcclient

    statistics = grpcclient.InferenceServerClient(url=url).get_inference_statistics(model, as_json=True)
    found = {}
    for entry in statistics["model_stats"][0].get("batch_stats", []):
        found[str(entry["batch_size"])] = int(entry["compute_infer"].get("count", 0))
    return dict(sorted(found.items(), key=lambda kv: int(kv[0])))


def _configs(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(v) for v in pair.split(":")) for pair in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or p[0] < 1 or p[1] < 0 for p in pairs):
        raise argparse.ArgumentTypeError(f"give MAX_BATCH:DELAY_US pairs like 1:0,16:2000, got {text!r}")
    return pairs


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| batch | ms per batch (p50) | ms per image | images/s |",
        "|---|---|---|---|",
        *(
            f"| {r['batch']} | {r['ms_per_batch_p50']:.1f} | {r['ms_per_image']:.1f} | {r['images_per_s']:.1f} |"
            for r in result["session"]
        ),
    ]
    if result.get("triton"):
        c = result["concurrency"]
        lines += [
            "",
            f"| Triton max batch | queue delay (µs) | req/s at c={c} | p50 / p95 (ms) | batches formed (size: count) |",
            "|---|---|---|---|---|",
            *(
                f"| {r['max_batch_size']} | {r['queue_delay_us']} | {r['requests_per_s']:.1f} | "
                f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} | "
                + ", ".join(f"{k}: {v}" for k, v in r["batches_formed"].items())
                + " |"
                for r in result["triton"]
            ),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from chexops.benchmarks.serve_bench import _cpus
    from chexops.benchmarks.serve_report import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", help="a chexops ONNX file")
    source.add_argument("--architecture", choices=["small", "densenet121"], help="a seeded random-init network")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=int, default=32, help="--architecture small: the CNN's width")
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32", help="with --architecture")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes, e.g. 1,4,16")
    parser.add_argument("--seconds", type=float, default=3.0, help="about this long of runs per batch size")
    parser.add_argument("--cpus", type=_cpus, help="CPUs of the session and of Triton, e.g. 0")
    parser.add_argument("--client-cpus", type=_cpus, help="--triton: CPUs of the clients, e.g. 1")
    parser.add_argument("--triton", action="store_true", help="also sweep Triton's dynamic batcher")
    parser.add_argument("--image", help="--triton: the image the clients send (PNG, JPEG or DICOM)")
    parser.add_argument(
        "--configs",
        type=_configs,
        default=TRITON_CONFIGS,
        help="--triton: MAX_BATCH:DELAY_US pairs [default: " + ",".join(f"{b}:{d}" for b, d in TRITON_CONFIGS) + "]",
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches takes sizes like 1,4,16, got {args.batches!r}")
    if any(not 1 <= b <= 1024 for b in batches):
        parser.error("--batches: each size within 1..1024")
    if args.triton and not args.image:
        parser.error("--triton needs --image")
    if args.cpus and args.client_cpus and args.cpus & args.client_cpus:
        parser.error("--cpus and --client-cpus must not share a CPU")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="batch-sweep-home-") as scratch:
        if args.architecture:
            from chexops.benchmarks.bare import model_file
            from chexops.benchmarks.random_model import random_init_model

            os.environ["CHEXOPS_HOME"] = scratch
            os.environ["BENTOML_HOME"] = str(Path(scratch) / "bentoml")
            onnx = model_file(random_init_model(args.architecture, args.size, args.width), args.precision)
        else:
            onnx = Path(args.onnx)
            if not onnx.is_file():
                raise SystemExit(f"batch_sweep: no ONNX file at {onnx}")
        if args.client_cpus:
            os.sched_setaffinity(0, args.client_cpus)
        result: dict[str, Any] = {"onnx_precision": args.precision, "threads": args.threads, "provider": args.provider}
        log.info("ONNX Runtime session on %s, batch %s", onnx, batches)
        pinned = os.sched_getaffinity(0)
        if args.cpus:
            os.sched_setaffinity(0, args.cpus)
        result["session"] = session_sweep(onnx, args.threads, args.provider, batches, args.seconds)
        os.sched_setaffinity(0, pinned)
        if args.triton:
            result["concurrency"] = args.concurrency
            result["triton"] = triton_sweep(args, onnx)
    result["machine"] = info
    emit(result, "batch_sweep", argv, started, markdown if args.markdown else None)


if __name__ == "__main__":
    main()
