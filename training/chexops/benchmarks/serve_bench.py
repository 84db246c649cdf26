"""The clinic endpoint against the bare ONNX Runtime session: latency, overhead, throughput.

    # start the service on a Bento model (twice: adaptive batching on, then off) and measure it
    python -m chexops.benchmarks.serve_bench --start --model chexops-cxr:v1 --image IMAGE
    # the same on a seeded random-init DenseNet-121 at 224 px (exported into a temporary store)
    python -m chexops.benchmarks.serve_bench --start --architecture densenet121 --size 224 --image IMAGE
    # a service that is already running (its batching setting as it is)
    python -m chexops.benchmarks.serve_bench --url http://127.0.0.1:3000 --key KEY --image IMAGE
    # beside a running Triton that holds `chexops triton export --model chexops-cxr:v3 --out DIR`
    python -m chexops.benchmarks.serve_bench --start --model chexops-cxr:v3 --image IMAGE --triton 127.0.0.1:8001
    # and a Triton started here: the Python-backend repository (bytes in over HTTP and gRPC, tensors in)
    python -m chexops.benchmarks.serve_bench --start --model chexops-cxr:v3 --image IMAGE --triton-local
    # overload: 64 concurrent clients for 30 s (answers by status, Retry-After, errors, latency, RSS)
    python -m chexops.benchmarks.serve_bench --start --architecture densenet121 --size 224 --image IMAGE --flood 30
    # client and server on separate cores (2-core machine: the server and the bare session on CPU 0, one thread)
    python -m chexops.benchmarks.serve_bench --start --architecture densenet121 --size 224 --image IMAGE --threads 1
    --server-cpus 0 --client-cpus 1

Measures, on one image (PNG, JPEG or DICOM), over loopback:

- the bare path, in this process: `chexops.imaging.decode` + the model's preprocessing +
  `session.run` through `chexops.serving.inference.OnnxModel` (the service's own code), on the same
  ONNX file with the same intra-op threads; N sequential runs after a warm-up; and the same at
  concurrency C (C threads sharing the one session), the throughput the service is held to;
- `/predict`: N sequential requests (one keep-alive connection), latency seen by the client;
- the ratios: service p50 (p95) over bare p50 (p95), and throughput at concurrency C over bare's;
- `/predict` at concurrency C (C client threads, M requests in all): requests/s and the per-request
  p50/p95, with adaptive batching on and off (`CHEXOPS_BATCHING=0`) when the script starts the service;
- with --start, the same for a minimal FastAPI + uvicorn server around the same session and
  preprocessing (`chexops.benchmarks.fastapi_baseline`; --no-fastapi skips it), and with --triton
  for a running Triton Inference Server (`chexops.benchmarks.triton_client`); with --triton-local for
  the Triton that `chexops triton serve` runs, started here on the servers' CPUs with the Python-backend
  repository of the same ONNX file (image bytes in over HTTP and gRPC, tensors in over gRPC).

With --server-cpus and --client-cpus the servers and the bare session run on the first set of CPUs
and the HTTP clients on the second, so that they do not take each other's cores.

With --start the service gets its own feedback store in a temporary directory and a rate limit
high enough for the benchmark; with --url, the service's rate limit must allow the requests
(`CHEXOPS_RATE_LIMIT`, `CHEXOPS_RATE_BURST`). Prints one JSON object; `--markdown` also prints
table rows for docs/benchmarks.md on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chexops.benchmarks import cpu_ms_per_call, stats
from chexops.benchmarks.bare import bare, model_file
from chexops.benchmarks.harness import Pinned, server, service_env
from chexops.benchmarks.predict_clients import ServiceError, concurrent, sequential
from chexops.benchmarks.random_model import random_init_model
from chexops.benchmarks.serve_report import machine, markdown, vs_bare
from chexops.core.errors import ChexopsError
from chexops.core.names import DEFAULT_MODEL_NAME

log = logging.getLogger("chexops.benchmarks.serve_bench")


def measure_service(url: str, key: str, data: bytes, args, pid: int | None = None) -> dict[str, Any]:
    """Sequential, then concurrent requests; with `pid` (a server started here), the CPU-ms its processes spent
    per sequential request (warm-up included)."""
    calls = args.runs + args.warmup
    seq, cpu_ms = cpu_ms_per_call(pid, calls, lambda: sequential(url, key, data, args.runs, args.warmup))
    out = {"sequential": {**seq, **({"server_cpu_ms_per_request": cpu_ms} if pid else {})}}
    log.info(
        "  sequential: p50 %.2f ms, p95 %.2f ms; failed %d",
        out["sequential"]["p50_ms"],
        out["sequential"]["p95_ms"],
        out["sequential"]["errors"]["failed"],
    )
    out["concurrent"] = concurrent(url, key, data, args.concurrency, args.requests, args.warmup)
    c = out["concurrent"]
    log.info(
        "  concurrency %d: %.1f req/s, p50 %.2f ms, p95 %.2f ms; failed %d %s",
        args.concurrency,
        c["requests_per_s"],
        c["p50_ms"],
        c["p95_ms"],
        c["errors"]["failed"],
        c["errors"]["examples"] or "",
    )
    return out


def run_flood(args) -> dict[str, Any]:
    """`--flood`: warm up, then `--clients` clients on /predict for the given seconds (chexops.benchmarks.flood)."""
    from chexops.benchmarks.flood import flood

    data = Path(args.image).read_bytes()
    result: dict[str, Any] = {
        "service_env": args.service_env,
        "image": str(args.image),
        "intra_op_threads": args.threads,
    }

    def measure(url: str, key: str, pid: int | None) -> dict[str, Any]:
        sequential(url, key, data, runs=max(1, args.warmup), warmup=0)  # load the model's code paths first
        log.info("Flooding %s/predict with %d clients for %d s", url, args.clients, args.flood)
        return flood(url, key, data, clients=args.clients, seconds=args.flood, pid=pid)

    if args.start:
        key = secrets.token_urlsafe(24)
        with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
            logs = Path(args.log_dir) if args.log_dir else Path(tmp)
            logs.mkdir(parents=True, exist_ok=True)
            env = service_env(args, key, Path(tmp), batching=True)
            for name in ("CHEXOPS_BATCHING", "CHEXOPS_MAX_QUEUE", "CHEXOPS_QUEUE_TIMEOUT_MS"):
                env.pop(name)  # the service's own defaults, unless --service-env sets them
            env.update(dict(item.split("=", 1) for item in args.service_env))
            with server(env, logs / "service-flood.log", cpus=args.server_cpus) as svc:
                result["flood"] = measure(svc.url, key, svc.pid)
                result["flood"]["alive_after"] = svc.alive()
        result["model_tag"] = args.model
    else:
        if not args.key:
            raise SystemExit("--url needs --key (an API key of the service)")
        result["flood"] = measure(args.url.rstrip("/"), args.key, None)
    f = result["flood"]
    log.info(
        "  %d answers %s in %.0f s; %d connection errors; admitted p95 %s ms; RSS %s → peak %s → %s MiB",
        f["answers"],
        f["by_status"],
        f["seconds"],
        sum(f["connection_errors"].values()),
        (f["admitted_latency"] or {}).get("p95_ms"),
        f.get("rss_before_mb"),
        f.get("rss_peak_mb"),
        f.get("rss_after_mb"),
    )
    return result


def run(args) -> dict[str, Any]:
    if args.flood:
        return run_flood(args)
    data = Path(args.image).read_bytes()
    result: dict[str, Any] = {
        "service_env": args.service_env,
        "image": str(args.image),
        "image_bytes": len(data),
        "intra_op_threads": args.threads,
        "precision": args.precision,
        "runs": args.runs,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "concurrent_requests": args.requests,
        "services": {},
    }
    if args.start:
        key = secrets.token_urlsafe(24)
        with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
            for batching in (True, False):
                name = "batching_on" if batching else "batching_off"
                log.info("Starting the service (%s) on %s", name, args.model)
                logs = Path(args.log_dir) if args.log_dir else Path(tmp)
                logs.mkdir(parents=True, exist_ok=True)
                with server(
                    service_env(args, key, Path(tmp), batching), logs / f"service-{name}.log", cpus=args.server_cpus
                ) as svc:
                    try:
                        result["services"][name] = measure_service(svc.url, key, data, args, svc.pid)
                    except ServiceError as exc:
                        raise ServiceError(
                            f"{exc}\n--- the service's log ({name}), last lines ---\n{svc.logs()}"
                        ) from None
            if not args.no_fastapi:  # the baseline: FastAPI + uvicorn around the same session and preprocessing
                onnx = Path(args.onnx) if args.onnx else model_file(args.model, args.precision)
                log.info("Starting the FastAPI + uvicorn baseline on %s", onnx)
                module = ["chexops.benchmarks.fastapi_baseline", "--onnx", str(onnx), "--threads", str(args.threads)]
                with server(
                    service_env(args, key, Path(tmp), False), logs / "fastapi.log", module=module, cpus=args.server_cpus
                ) as svc:
                    result["services"]["fastapi_uvicorn"] = measure_service(svc.url, key, data, args, svc.pid)
        result["model_tag"] = args.model
    else:
        if not args.key:
            raise SystemExit("--url needs --key (an API key of the service)")
        log.info("Measuring %s", args.url)
        result["services"]["as_running"] = measure_service(args.url.rstrip("/"), args.key, data, args)
        served = result["services"]["as_running"]["sequential"]["model"]
        result["model_tag"] = args.model or f"{served.get('name')}:v{served.get('version')}"
    onnx_path = Path(args.onnx) if args.onnx else model_file(result["model_tag"], args.precision)
    log.info("Bare ONNX Runtime session on %s", onnx_path)
    with Pinned(args.server_cpus):  # where the servers ran
        result["bare"] = bare(onnx_path, data, args.threads, args.runs, args.warmup, args.concurrency, args.requests)
    log.info(
        "  bare: p50 %.2f ms, p95 %.2f ms; %.1f req/s at concurrency %d",
        result["bare"]["p50_ms"],
        result["bare"]["p95_ms"],
        result["bare"]["concurrent"]["requests_per_s"],
        args.concurrency,
    )
    if args.triton:
        from chexops.benchmarks.triton_client import infer_function, measure

        log.info("Triton at %s, model %s (gRPC; decode + preprocess in the client)", args.triton, args.triton_model)
        once = infer_function(args.triton, args.triton_model, onnx_path, data)
        result["services"]["triton_grpc"] = measure(
            once, args.runs, args.warmup, args.concurrency, args.requests, stats
        )
        for part in ("sequential", "concurrent"):
            result["services"]["triton_grpc"][part]["errors"] = {"failed": 0}
    if args.triton_local:
        triton_local(args, onnx_path, data, result)
    for value in result["services"].values():
        value["vs_bare"] = vs_bare(value, result["bare"])
    return result


def triton_local(args, onnx_path: Path, data: bytes, result: dict[str, Any]) -> None:
    """Triton here (`chexops triton serve`'s server, on the servers' CPUs) with the Python-backend repository of
    `onnx_path`: its time to ready, then image bytes over HTTP and gRPC and the preprocessed tensor over gRPC."""
    from chexops.benchmarks.triton_client import bytes_function, infer_function, measure
    from chexops.core.processes import free_port
    from chexops.export.triton import write_python_repository
    from chexops.export.triton_server import TritonServer

    with tempfile.TemporaryDirectory(prefix="serve-bench-triton-") as tmp:
        repository = Path(tmp) / "repository"
        written = write_python_repository(onnx_path, repository, threads=args.threads)
        logs = Path(args.log_dir) if args.log_dir else Path(tmp)
        cpus = args.server_cpus
        ports = [free_port() for _ in range(3)]
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        with TritonServer(repository, *ports, logs / "tritonserver.log", preexec=preexec) as triton:
            result["triton_local"] = {"ready_s": triton.ready_s, "models": written.models, "threads": args.threads}
            http, grpc = f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"
            paths = {
                "triton_python_bytes_http": bytes_function(http, "http", written.models["bytes"], data),
                "triton_python_bytes_grpc": bytes_function(grpc, "grpc", written.models["bytes"], data),
                "triton_python_tensor_grpc": infer_function(grpc, written.models["tensor"], onnx_path, data),
            }
            for name, once in paths.items():
                log.info("Triton here: %s", name)
                measured = measure(
                    once, args.runs, args.warmup, args.concurrency, args.requests, stats, pid=triton.server.pid
                )
                for part in ("sequential", "concurrent"):
                    measured[part]["errors"] = {"failed": 0}
                result["services"][name] = measured


def _cpus(text: str) -> set[int]:
    """'0', '0,2' or '0-3' → a set of CPU numbers."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CPU list: {text!r} (e.g. 0, 0,2 or 0-3)") from None
    if not cpus:
        raise argparse.ArgumentTypeError("an empty CPU list")
    return cpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running service (loopback), e.g. http://127.0.0.1:3000")
    where.add_argument("--start", action="store_true", help="start the service here (batching on, then off)")
    parser.add_argument("--key", help="API key for --url")
    parser.add_argument("--image", required=True, help="the image to send (PNG, JPEG or DICOM)")
    parser.add_argument(
        "--model", default="", help="Bento model tag (--start: default the registry's candidate; --url: from /predict)"
    )
    parser.add_argument(
        "--architecture",
        choices=["small", "densenet121"],
        help="--start on a seeded random-init network of this architecture (needs torch) instead of --model",
    )
    parser.add_argument("--size", type=int, default=224, help="--architecture input size")
    parser.add_argument("--width", type=int, default=32, help="--architecture small: the CNN's width")
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="--start: another setting for the service, e.g. CHEXOPS_MAX_LATENCY_MS=2000 (repeatable)",
    )
    parser.add_argument("--log-dir", help="--start: keep the services' logs here (default: a temporary directory)")
    parser.add_argument("--onnx", help="the ONNX file for the bare session (default: the Bento model's file)")
    parser.add_argument(
        "--precision", choices=["fp32", "int8"], default="fp32", help="as the service's CHEXOPS_PRECISION"
    )
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, as the service's CHEXOPS_THREADS")
    parser.add_argument("--runs", type=int, default=200, help="sequential requests (and bare runs)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400, help="requests in all at --concurrency")
    parser.add_argument("--no-fastapi", action="store_true", help="--start: skip the FastAPI + uvicorn baseline")
    parser.add_argument(
        "--triton",
        metavar="HOST:PORT",
        help="also measure a running Triton (gRPC) holding `chexops triton export`'s model",
    )
    parser.add_argument(
        "--triton-model", default=DEFAULT_MODEL_NAME, help="--triton: the model's name in the repository"
    )
    parser.add_argument(
        "--triton-local",
        action="store_true",
        help="also start Triton here (Python backend, nvidia-pytriton's tritonserver) and measure bytes and tensors in",
    )
    parser.add_argument(
        "--flood",
        type=int,
        default=0,
        metavar="SECONDS",
        help="instead: --clients concurrent clients on /predict for SECONDS (refusals, errors, latency, RSS)",
    )
    parser.add_argument("--clients", type=int, default=64, help="--flood: concurrent clients")
    parser.add_argument("--server-cpus", type=_cpus, help="CPUs for the servers and the bare session, e.g. 0 or 0-1")
    parser.add_argument("--client-cpus", type=_cpus, help="CPUs for the HTTP clients, e.g. 1 (with --server-cpus)")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table (stderr)")
    args = parser.parse_args(argv)
    if bool(args.server_cpus) != bool(args.client_cpus):
        parser.error("--server-cpus and --client-cpus go together")
    if args.server_cpus and args.server_cpus & args.client_cpus:
        parser.error("--server-cpus and --client-cpus must not share a CPU")
    if args.server_cpus and not (args.server_cpus | args.client_cpus) <= os.sched_getaffinity(0):
        parser.error(f"this machine lets the benchmark use CPUs {sorted(os.sched_getaffinity(0))}")
    if any("=" not in item for item in args.service_env):
        parser.error("--service-env takes NAME=VALUE")
    if args.architecture and not args.start:
        parser.error("--architecture needs --start")
    for name in ("runs", "requests", "concurrency", "threads", "clients"):
        if not 1 <= getattr(args, name) <= 100_000:
            parser.error(f"--{name} must be within 1..100000")
    if args.url and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("--url must be a loopback address (the benchmark measures the service, not the network)")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    started = time.monotonic()
    info = machine()
    if args.client_cpus:
        os.sched_setaffinity(
            0, args.client_cpus
        )  # the clients' CPUs; servers and the bare session are placed explicitly
        info["server_cpus"], info["client_cpus"] = sorted(args.server_cpus), sorted(args.client_cpus)
    with tempfile.TemporaryDirectory(prefix="serve-bench-home-") as scratch:
        if args.architecture:  # a store of its own: the user's CHEXOPS_HOME stays untouched
            os.environ["CHEXOPS_HOME"] = scratch
            os.environ["BENTOML_HOME"] = str(Path(scratch) / "bentoml")
            log.info("Exporting a random-init %s at %d px into %s", args.architecture, args.size, scratch)
            args.model = random_init_model(args.architecture, args.size, args.width)
        elif args.start and not args.model:
            from chexops.export.bento import serving_tag

            args.model = serving_tag("").tag  # the registry's candidate, as `chexops serve` resolves it
        try:
            result = run(args)
        except ServiceError as exc:
            raise SystemExit(f"serve_bench: {exc}") from None
        except ChexopsError as exc:  # a server that did not start: its log's tail
            raise SystemExit(str(exc)) from None
    if args.architecture:
        result["model"] = {"architecture": args.architecture, "size": args.size, "weights": "random init (seed 0)"}
    result.update(
        {
            "command": "python -m chexops.benchmarks.serve_bench " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": info,
            "seconds": round(time.monotonic() - started, 1),
        }
    )
    try:
        info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    result["command"] = result["command"].replace(args.key, "KEY") if args.key else result["command"]
    print(json.dumps(result, indent=2, default=str))
    if args.markdown and "flood" not in result:
        print(markdown(result), file=sys.stderr)


if __name__ == "__main__":
    main()
