"""The clinic endpoint against the bare ONNX Runtime session: latency, overhead, throughput.

    # start the service on a Bento model (twice: adaptive batching on, then off) and measure it
    python -m chexops.benchmarks.serve_bench --start --model chexops-cxr:v1 --image IMAGE
    # the same on a seeded random-init DenseNet-121 at 224 px (exported into a temporary store)
    python -m chexops.benchmarks.serve_bench --start --architecture densenet121 --size 224 --image IMAGE
    # a service that is already running (its batching setting as it is)
    python -m chexops.benchmarks.serve_bench --url http://127.0.0.1:3000 --key KEY --image IMAGE
    # beside a running Triton that holds `chexops triton export --model chexops-cxr:v3 --out DIR`
    python -m chexops.benchmarks.serve_bench --start --model chexops-cxr:v3 --image IMAGE --triton 127.0.0.1:8001
    # overload: 64 concurrent clients for 30 s (answers by status, Retry-After, errors, latency, RSS)
    python -m chexops.benchmarks.serve_bench --start --architecture densenet121 --size 224 --image IMAGE --flood 30
    # client and server on separate cores (2-core machine: the server and the bare session on CPU 0, one thread)
    python -m chexops.benchmarks.serve_bench --start --architecture densenet121 --size 224 --image IMAGE --threads 1 --server-cpus 0 --client-cpus 1

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
  for a running Triton Inference Server (`chexops.benchmarks.triton_client`).

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
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from chexops.benchmarks import concurrent_calls, run_threads, timed_calls
from chexops.core.errors import ChexopsError
from chexops.core.processes import stop_tree
from chexops.serving.launch import wait_ready
from chexops.core.processes import die_with_parent
from chexops.core import paths
from chexops.core.names import DEFAULT_MODEL_NAME

log = logging.getLogger("chexops.benchmarks.serve_bench")

ROOT = paths.ROOT
SERVICE = "bentos/service.py:Chexops"


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
    return {"cpu": cpu, "isa": isa, "logical_cpus": os.cpu_count(), "load_average_at_start": load,
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "bentoml": bentoml_version,
            "platform": platform.platform()}


def stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {"n": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3), "max_ms": round(float(ms.max()), 3)}


# --- a seeded random-init model (for --architecture) -------------------------------------------------

def random_init_model(name: str, size: int, width: int, calibration: int = 8) -> str:
    """Export a seeded random-init network (fp32 + static int8, real chexops metadata) into the Bento
    store of the current CHEXOPS_HOME; returns its tag. Needs torch (the training extra)."""
    import torch

    from chexops.export.bento import import_onnx
    from chexops.config import ModelConfig
    from chexops.export.onnx import build_metadata, export_onnx, write_metadata
    from chexops.core.labels import CHEXPERT_LABELS, DEFAULT_THRESHOLD
    from chexops.train.models import build_model
    from chexops.export.files import FP32_FILE, INT8_FILE
    from chexops.core.paths import home
    from chexops.imaging.preprocessing import PreprocessSpec
    from chexops.export.quantize import quantize_static_qdq

    torch.manual_seed(0)
    labels = list(CHEXPERT_LABELS)
    spec = PreprocessSpec(size=size, channels=1, mean=(0.5,), std=(0.25,))
    model = build_model(ModelConfig(name=name, width=width, pretrained_weights=None), len(labels), spec).eval()
    out = home() / "exports" / f"bench-{name}-{size}"
    fp32 = export_onnx(model, spec, out / FP32_FILE)
    metadata = build_metadata(labels=labels, thresholds={label: DEFAULT_THRESHOLD for label in labels},
                              rule="benchmark (random init)",
                              spec=spec, model_name=f"bench-{name}-{size}", registry_version="1", run_id="0" * 32,
                              data_version="none", head_weight=model.head.weight.detach().numpy(),
                              head_bias=model.head.bias.detach().numpy())
    write_metadata(fp32, metadata)
    x = np.random.default_rng(0).normal(0, 1, (calibration, 1, size, size)).astype(np.float32)
    int8 = quantize_static_qdq(fp32, out / INT8_FILE, x)
    write_metadata(int8, {**metadata, "precision": "int8-static-qdq"})
    return import_onnx(fp32, int8).tag


# --- the bare session ------------------------------------------------------------------------------------

def model_file(tag: str, precision: str) -> Path:
    """The ONNX file the service loads for `tag` at `precision`, from the Bento model store."""
    from chexops.core.paths import bentoml_home
    from chexops.export.files import FILES

    bentoml_home()
    import bentoml

    return Path(bentoml.models.get(tag).path_of(FILES[precision]))


def bare(onnx_path: Path, data: bytes, threads: int, runs: int, warmup: int, concurrency: int = 1,
         requests: int = 0) -> dict[str, Any]:
    """decode + preprocess + session.run of one image, `runs` times, in this process (and `requests`
    times from `concurrency` threads)."""
    from chexops.imaging.decode import decode
    from chexops.serving.inference import OnnxModel

    model = OnnxModel.load(onnx_path, threads=threads)

    def once() -> np.ndarray:
        x = model.preprocess(decode(data).grey)
        return model.probabilities(x[None])

    times = timed_calls(once, runs, warmup)
    result = {**stats(times), "model": f"{model.name} v{model.version}", "precision": model.precision or "fp32",
              "input_size": model.spec.size, "file": str(onnx_path)}
    result["concurrent"] = bare_concurrent(once, concurrency, requests or runs)
    return result


def bare_concurrent(once, concurrency: int, requests: int) -> dict[str, Any]:
    """`requests` calls of `once` from `concurrency` threads sharing the session: requests/s."""
    times, wall = concurrent_calls(once, concurrency, requests)
    return {**stats(times), "concurrency": concurrency, "wall_s": round(wall, 3), "requests_per_s": round(len(times) / wall, 2)}


# --- the service over HTTP -------------------------------------------------------------------------------

class ServiceError(RuntimeError):
    pass


def _post(client, url: str, key: str, data: bytes) -> tuple[int, dict]:
    """(status, JSON body) of one /predict; status 0 when the connection failed (reset, refused, timed
    out). A 401 or 429 is the benchmark's own misconfiguration: it stops."""
    import httpx

    try:
        response = client.post(f"{url}/predict", headers={"Authorization": f"Bearer {key}"},
                               files={"image": ("image", data, "application/octet-stream")})
    except httpx.TransportError as exc:
        return 0, {"error": f"connection: {type(exc).__name__}: {exc}"}
    if response.status_code in (401, 429):
        hint = " (raise the service's CHEXOPS_RATE_LIMIT / CHEXOPS_RATE_BURST for a benchmark)" if response.status_code == 429 else ""
        raise ServiceError(f"/predict answered {response.status_code}: {response.text[:300]}{hint}")
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:300]}
    return response.status_code, body


class Failures:
    """Requests that did not answer 200: counted per status (a service error is a result, not a crash
    of the benchmark), with the first message of each; too many stop the run."""

    def __init__(self, limit: int):
        self.limit, self.counts, self.examples = limit, {}, {}
        self._lock = threading.Lock()

    def add(self, status: int, body: dict) -> None:
        with self._lock:
            self.counts[str(status)] = self.counts.get(str(status), 0) + 1
            self.examples.setdefault(str(status), str(body.get("error", body))[:200])
            if sum(self.counts.values()) > self.limit:
                raise ServiceError(f"more than {self.limit} requests failed: {self.counts} {self.examples}")

    def report(self) -> dict[str, Any]:
        return {"failed": sum(self.counts.values()), "by_status": dict(self.counts), "examples": dict(self.examples)}


def sequential(url: str, key: str, data: bytes, runs: int, warmup: int) -> dict[str, Any]:
    import httpx

    failures = Failures(limit=max(5, runs // 10))
    model: dict = {}
    with httpx.Client(timeout=60) as client:
        for _ in range(warmup):
            status, body = _post(client, url, key, data)
            if status != 200:
                failures.add(status, body)
        times, server = [], []
        for _ in range(runs):
            start = time.perf_counter()
            status, body = _post(client, url, key, data)
            elapsed = time.perf_counter() - start
            if status != 200:
                failures.add(status, body)
                continue
            times.append(elapsed)
            server.append(body.get("timings", {}))
            model = body.get("model", model)
    if not times:
        raise ServiceError(f"no request succeeded: {failures.report()}")
    # what the service says it spent inside /predict (median of each timing it reports)
    keys = sorted({k for t in server for k, v in t.items() if isinstance(v, (int, float))})
    inside = {k: round(float(np.median([t[k] for t in server if k in t])), 3) for k in keys}
    return {**stats(times), "model": model, "server_timings_p50_ms": inside, "errors": failures.report()}


def concurrent(url: str, key: str, data: bytes, concurrency: int, requests: int, warmup: int) -> dict[str, Any]:
    """`requests` /predict calls from `concurrency` threads (one keep-alive client each); latency
    and throughput count the successful ones, the others are reported by status."""
    import httpx

    failures = Failures(limit=max(10, requests // 4))
    clients = [httpx.Client(timeout=120) for _ in range(concurrency)]
    try:
        for client in clients:  # open the connections, warm the workers
            for _ in range(max(1, warmup // concurrency)):
                status, body = _post(client, url, key, data)
                if status != 200:
                    failures.add(status, body)
        counter = iter(range(requests))
        lock = threading.Lock()
        times: list[float] = []
        fatal: list[BaseException] = []

        def worker(client) -> None:
            while True:
                with lock:
                    if next(counter, None) is None or fatal:
                        return
                start = time.perf_counter()
                try:
                    status, body = _post(client, url, key, data)
                    elapsed = time.perf_counter() - start
                    if status != 200:
                        failures.add(status, body)
                        continue
                except BaseException as exc:  # noqa: BLE001 - reported below
                    with lock:
                        fatal.append(exc)
                    return
                with lock:
                    times.append(elapsed)

        wall = run_threads([threading.Thread(target=worker, args=(c,)) for c in clients])
    finally:
        for client in clients:
            client.close()
    if fatal:
        raise ServiceError(str(fatal[0]))
    if not times:
        raise ServiceError(f"no request succeeded: {failures.report()}")
    return {**stats(times), "concurrency": concurrency, "wall_s": round(wall, 3),
            "requests_per_s": round(len(times) / wall, 2), "errors": failures.report()}


# --- starting the service --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Started:
    """`bentoml serve` in a process group of its own on a free loopback port, ready."""

    def __init__(self, env: dict[str, str], log_path: Path, timeout: float = 180, module: list[str] | None = None,
                 cpus: set[int] | None = None):
        """`module`: another server (`python -m ...` arguments, given --host and --port) instead of the service;
        `cpus`: the CPUs it (and every process it starts) runs on."""
        if not module and not (ROOT / "bentos" / "service.py").exists():
            raise SystemExit(f"{ROOT / 'bentos' / 'service.py'} is missing: --start needs the repository checkout")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        argv = module or ["bentoml", "serve", SERVICE]
        with open(log_path, "ab") as fh:
            self.process = subprocess.Popen([sys.executable, "-m", *argv, "--host", "127.0.0.1", "--port", str(self.port)],
                                            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=lambda: _child_setup(cpus))
        try:
            wait_ready(self.url, self.process, log_path, timeout)
        except ChexopsError as exc:
            self.stop()
            raise SystemExit(str(exc)) from None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_tree(self.process)

    def __enter__(self) -> "Started":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _child_setup(cpus: set[int] | None) -> None:
    die_with_parent()
    if cpus:
        os.sched_setaffinity(0, cpus)


class Pinned:
    """`with Pinned(cpus):` this process runs on `cpus` (all threads started inside inherit them), then as before."""

    def __init__(self, cpus: set[int] | None):
        self.cpus, self.before = cpus, None

    def __enter__(self) -> None:
        if self.cpus:
            self.before = os.sched_getaffinity(0)
            os.sched_setaffinity(0, self.cpus)

    def __exit__(self, *exc) -> None:
        if self.before:
            os.sched_setaffinity(0, self.before)


def service_env(args, key: str, tmp: Path, batching: bool) -> dict[str, str]:
    from chexops.core import paths
    from chexops.core.paths import bentoml_home

    env = {k: v for k, v in os.environ.items() if not k.startswith("CHEXOPS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(dict(item.split("=", 1) for item in args.service_env))
    env.update({"CHEXOPS_HOME": str(paths.home()), "BENTOML_HOME": str(bentoml_home()), "BENTOML_DO_NOT_TRACK": "True",
                "CHEXOPS_MODEL": args.model, "CHEXOPS_PRECISION": args.precision, "CHEXOPS_THREADS": str(args.threads),
                "CHEXOPS_BATCHING": "1" if batching else "0", "CHEXOPS_API_KEYS": f"bench:{key}",
                "CHEXOPS_RATE_LIMIT": "1000000000", "CHEXOPS_RATE_BURST": "1000000",
                # latency runs measure the service, not its admission gate (--flood keeps the service's defaults)
                "CHEXOPS_MAX_QUEUE": "100000", "CHEXOPS_QUEUE_TIMEOUT_MS": "600000",
                "CHEXOPS_FEEDBACK_URL": f"sqlite:///{tmp / 'feedback.db'}"})
    for name in ("CHEXOPS_SHARED_DATA",):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def measure_service(url: str, key: str, data: bytes, args) -> dict[str, Any]:
    out = {"sequential": sequential(url, key, data, args.runs, args.warmup)}
    log.info("  sequential: p50 %.2f ms, p95 %.2f ms; failed %d", out["sequential"]["p50_ms"], out["sequential"]["p95_ms"],
             out["sequential"]["errors"]["failed"])
    out["concurrent"] = concurrent(url, key, data, args.concurrency, args.requests, args.warmup)
    c = out["concurrent"]
    log.info("  concurrency %d: %.1f req/s, p50 %.2f ms, p95 %.2f ms; failed %d %s", args.concurrency, c["requests_per_s"],
             c["p50_ms"], c["p95_ms"], c["errors"]["failed"], c["errors"]["examples"] or "")
    return out


def vs_bare(service: dict[str, Any], bare_result: dict[str, Any]) -> dict[str, float]:
    """The service's sequential p50 and p95 over the bare session's, and its throughput at concurrency over the bare one's."""
    ratios = {q: round(service["sequential"][f"{q}_ms"] / bare_result[f"{q}_ms"], 3) for q in ("p50", "p95")}
    return {**ratios, "throughput": round(service["concurrent"]["requests_per_s"] / bare_result["concurrent"]["requests_per_s"], 3)}


def run_flood(args) -> dict[str, Any]:
    """`--flood`: warm up, then `--clients` clients on /predict for the given seconds (chexops.benchmarks.flood)."""
    from chexops.benchmarks.flood import flood

    data = Path(args.image).read_bytes()
    result: dict[str, Any] = {"service_env": args.service_env, "image": str(args.image), "intra_op_threads": args.threads}

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
            with Started(env, logs / "service-flood.log", cpus=args.server_cpus) as svc:
                result["flood"] = measure(svc.url, key, svc.process.pid)
                result["flood"]["alive_after"] = svc.process.poll() is None
        result["model_tag"] = args.model
    else:
        if not args.key:
            raise SystemExit("--url needs --key (an API key of the service)")
        result["flood"] = measure(args.url.rstrip("/"), args.key, None)
    f = result["flood"]
    log.info("  %d answers %s in %.0f s; %d connection errors; admitted p95 %s ms; RSS %s → peak %s → %s MiB",
             f["answers"], f["by_status"], f["seconds"], sum(f["connection_errors"].values()),
             (f["admitted_latency"] or {}).get("p95_ms"), f.get("rss_before_mb"), f.get("rss_peak_mb"), f.get("rss_after_mb"))
    return result


def run(args) -> dict[str, Any]:
    if args.flood:
        return run_flood(args)
    data = Path(args.image).read_bytes()
    result: dict[str, Any] = {"service_env": args.service_env, "image": str(args.image), "image_bytes": len(data), "intra_op_threads": args.threads,
                              "precision": args.precision, "runs": args.runs, "warmup": args.warmup,
                              "concurrency": args.concurrency, "concurrent_requests": args.requests, "services": {}}
    if args.start:
        key = secrets.token_urlsafe(24)
        with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
            for batching in (True, False):
                name = "batching_on" if batching else "batching_off"
                log.info("Starting the service (%s) on %s", name, args.model)
                logs = Path(args.log_dir) if args.log_dir else Path(tmp)
                logs.mkdir(parents=True, exist_ok=True)
                with Started(service_env(args, key, Path(tmp), batching), logs / f"service-{name}.log", cpus=args.server_cpus) as svc:
                    try:
                        result["services"][name] = measure_service(svc.url, key, data, args)
                    except ServiceError as exc:
                        raise ServiceError(f"{exc}\n--- the service's log ({name}), last lines ---\n{svc.logs()}") from None
            if not args.no_fastapi:  # the baseline: FastAPI + uvicorn around the same session and preprocessing
                onnx = Path(args.onnx) if args.onnx else model_file(args.model, args.precision)
                log.info("Starting the FastAPI + uvicorn baseline on %s", onnx)
                module = ["chexops.benchmarks.fastapi_baseline", "--onnx", str(onnx), "--threads", str(args.threads)]
                with Started(service_env(args, key, Path(tmp), False), logs / "fastapi.log", module=module, cpus=args.server_cpus) as svc:
                    result["services"]["fastapi_uvicorn"] = measure_service(svc.url, key, data, args)
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
    log.info("  bare: p50 %.2f ms, p95 %.2f ms; %.1f req/s at concurrency %d", result["bare"]["p50_ms"], result["bare"]["p95_ms"],
             result["bare"]["concurrent"]["requests_per_s"], args.concurrency)
    if args.triton:
        from chexops.benchmarks.triton_client import infer_function, measure

        log.info("Triton at %s, model %s (gRPC; decode + preprocess in the client)", args.triton, args.triton_model)
        once = infer_function(args.triton, args.triton_model, onnx_path, data)
        result["services"]["triton_grpc"] = measure(once, args.runs, args.warmup, args.concurrency, args.requests, stats)
        for part in ("sequential", "concurrent"):
            result["services"]["triton_grpc"][part]["errors"] = {"failed": 0}
    for value in result["services"].values():
        value["vs_bare"] = vs_bare(value, result["bare"])
    return result


PATHS = {"fastapi_uvicorn": "FastAPI + uvicorn baseline (same session and preprocessing)",
         "triton_grpc": "Triton (ONNX Runtime backend, gRPC; decode + preprocess in the client)"}


def markdown(result: dict[str, Any]) -> str:
    b = result["bare"]
    bc = b["concurrent"]
    rows = ["| path | p50 (ms) | p95 (ms) | p50 vs bare | req/s at c={c} (vs bare) | p50 / p95 at c={c} (ms) | failed |".format(c=result["concurrency"]),
            "|---|---|---|---|---|---|---|",
            f"| bare ONNX Runtime (decode + preprocess + run) | {b['p50_ms']:.2f} | {b['p95_ms']:.2f} | 1.00× | "
            f"{bc['requests_per_s']:.1f} | {bc['p50_ms']:.1f} / {bc['p95_ms']:.1f} | — |"]
    for name, value in result["services"].items():
        s, c, ratio = value["sequential"], value["concurrent"], value["vs_bare"]
        label = PATHS.get(name, f"`/predict`, {name.replace('_', ' ')}")
        rows.append(f"| {label} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {ratio['p50']:.2f}× | "
                    f"{c['requests_per_s']:.1f} ({ratio['throughput']:.2f}×) | "
                    f"{c['p50_ms']:.1f} / {c['p95_ms']:.1f} | "
                    f"{s['errors']['failed'] + c['errors']['failed']} of {s['n'] + s['errors']['failed'] + c['n'] + c['errors']['failed']} |")
    return "\n".join(rows)


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running service (loopback), e.g. http://127.0.0.1:3000")
    where.add_argument("--start", action="store_true", help="start the service here (batching on, then off)")
    parser.add_argument("--key", help="API key for --url")
    parser.add_argument("--image", required=True, help="the image to send (PNG, JPEG or DICOM)")
    parser.add_argument("--model", default="", help="Bento model tag (--start: default the registry's candidate; --url: from /predict)")
    parser.add_argument("--architecture", choices=["small", "densenet121"],
                        help="--start on a seeded random-init network of this architecture (needs torch) instead of --model")
    parser.add_argument("--size", type=int, default=224, help="--architecture input size")
    parser.add_argument("--width", type=int, default=32, help="--architecture small: the CNN's width")
    parser.add_argument("--service-env", action="append", default=[], metavar="NAME=VALUE",
                        help="--start: another setting for the service, e.g. CHEXOPS_MAX_LATENCY_MS=2000 (repeatable)")
    parser.add_argument("--log-dir", help="--start: keep the services' logs here (default: a temporary directory)")
    parser.add_argument("--onnx", help="the ONNX file for the bare session (default: the Bento model's file)")
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32", help="as the service's CHEXOPS_PRECISION")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, as the service's CHEXOPS_THREADS")
    parser.add_argument("--runs", type=int, default=200, help="sequential requests (and bare runs)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400, help="requests in all at --concurrency")
    parser.add_argument("--no-fastapi", action="store_true", help="--start: skip the FastAPI + uvicorn baseline")
    parser.add_argument("--triton", metavar="HOST:PORT", help="also measure a running Triton (gRPC) holding `chexops triton export`'s model")
    parser.add_argument("--triton-model", default=DEFAULT_MODEL_NAME,
                        help="--triton: the model's name in the repository")
    parser.add_argument("--flood", type=int, default=0, metavar="SECONDS",
                        help="instead: --clients concurrent clients on /predict for SECONDS (refusals, errors, latency, RSS)")
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
        os.sched_setaffinity(0, args.client_cpus)  # the clients' CPUs; servers and the bare session are placed explicitly
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
    if args.architecture:
        result["model"] = {"architecture": args.architecture, "size": args.size, "weights": "random init (seed 0)"}
    result.update({"command": "python -m chexops.benchmarks.serve_bench " + " ".join(sys.argv[1:] if argv is None else argv),
                   "machine": info, "seconds": round(time.monotonic() - started, 1)})
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
