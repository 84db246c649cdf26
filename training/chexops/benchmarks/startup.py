"""Time to ready of `chexops serve`: from starting the command to `/readyz` 200, polled every 20 ms, and the CPU
seconds its processes (the command, BentoML's arbiter in it, the worker) had used by then.

    python -m chexops.benchmarks.startup [--runs 5] [-- SERVE ARGS...]   (e.g. -- --model chexops-cxr:v2)
    python -m chexops.benchmarks.startup --triton chexops-cxr:v1 [--runs 5]   # `chexops triton serve`, beside it

On $CHEXOPS_HOME's model (by default `models:/chexops-cxr@candidate`, the demo's); docs/benchmarks.md "Start-up".
The CPU seconds matter on a shared machine: the wall time there is mostly other people's load.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from chexops.benchmarks import process_tree_cpu
from chexops.core import paths
from chexops.core.processes import free_port

log = logging.getLogger(__name__)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def start_once(serve_args: list[str], log_path: Path, timeout: float = 120) -> tuple[float, float]:
    """One start of `chexops serve`: (seconds to /readyz 200, CPU seconds used by then); stopped after."""
    port = free_port()
    argv = [sys.executable, "-m", "chexops", "serve", "--port", str(port), *serve_args]
    with log_path.open("ab") as out:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=out, cwd=paths.ROOT, start_new_session=True)
        try:
            while not _ready(f"http://127.0.0.1:{port}/readyz"):
                if process.poll() is not None:
                    raise SystemExit(f"chexops serve exited with code {process.returncode}: see {log_path}")
                if time.perf_counter() - started > timeout:
                    raise SystemExit(f"chexops serve not ready after {timeout:.0f} s: see {log_path}")
                time.sleep(0.02)
            seconds = time.perf_counter() - started
            return seconds, process_tree_cpu(process.pid)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


def start_triton_once(repository: Path, models: list[str], log_path: Path, timeout: float = 180) -> tuple[float, float]:
    """One start of `chexops triton serve --repository`: (seconds until every model answers ready over HTTP, CPU
    seconds used by then); stopped after."""
    ports = [free_port() for _ in range(3)]
    argv = [sys.executable, "-m", "chexops", "triton", "serve", "--repository", str(repository)]
    argv += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    argv += ["--log", str(log_path.with_suffix(".triton.log"))]
    urls = [f"http://127.0.0.1:{ports[0]}/v2/models/{model}/ready" for model in models]
    with log_path.open("ab") as out:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=out, cwd=paths.ROOT, start_new_session=True)
        try:
            while not all(_ready(url) for url in urls):
                if process.poll() is not None:
                    raise SystemExit(f"chexops triton serve exited with code {process.returncode}: see {log_path}")
                if time.perf_counter() - started > timeout:
                    raise SystemExit(f"chexops triton serve not ready after {timeout:.0f} s: see {log_path}")
                time.sleep(0.02)
            return time.perf_counter() - started, process_tree_cpu(process.pid)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--log", type=Path, default=None, help="the servers' output [default: a temporary file]")
    parser.add_argument(
        "--triton",
        metavar="MODEL",
        help="time `chexops triton serve` instead, on the Python-backend repository of this Bento model (e.g. "
        "chexops-cxr:v1): until both of its models answer ready",
    )
    parser.add_argument("serve_args", nargs="*", help="after --: chexops serve's own options")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log_path = args.log or Path(os.environ.get("TMPDIR", "/tmp")) / f"chexops-startup-{os.getpid()}.log"
    with tempfile.TemporaryDirectory(prefix="chexops-startup-") as scratch:
        if args.triton:
            from chexops.export.triton import bento_model_file, write_python_repository

            written = write_python_repository(bento_model_file(args.triton, "fp32"), Path(scratch) / "repository")
            models = list(written.models.values())

            def once() -> tuple[float, float]:
                return start_triton_once(Path(written.repository), models, log_path)
        else:

            def once() -> tuple[float, float]:
                return start_once(args.serve_args, log_path)

        results = []
        for i in range(args.runs):
            seconds, cpu = once()
            results.append((seconds, cpu))
            load = os.getloadavg()[0]
            log.info("start %d: ready after %.2f s, %.2f CPU-s (load average %.1f)", i + 1, seconds, cpu, load)
            time.sleep(1)  # the port and the worker gone
    walls, cpus = [r[0] for r in results], [r[1] for r in results]
    log.info(
        "median %.2f s to ready (min %.2f, max %.2f), median %.2f CPU-s, %d starts",
        statistics.median(walls),
        min(walls),
        max(walls),
        statistics.median(cpus),
        len(results),
    )


if __name__ == "__main__":
    main()
