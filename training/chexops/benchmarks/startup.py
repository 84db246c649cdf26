"""Time to ready of `chexops serve`: from starting the command to `/readyz` 200, polled every 20 ms, and the CPU
seconds its processes (the command, BentoML's arbiter in it, the worker) had used by then.

    python -m chexops.benchmarks.startup [--runs 5] [-- SERVE ARGS...]   (e.g. -- --model chexops-cxr:v2)

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
import time
import urllib.request
from pathlib import Path

import psutil

from chexops.core import paths
from chexops.core.processes import free_port

log = logging.getLogger(__name__)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def _cpu_seconds(pid: int) -> float:
    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            t = process.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


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
            return seconds, _cpu_seconds(process.pid)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--log", type=Path, default=None, help="the servers' output [default: a temporary file]")
    parser.add_argument("serve_args", nargs="*", help="after --: chexops serve's own options")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log_path = args.log or Path(os.environ.get("TMPDIR", "/tmp")) / f"chexops-startup-{os.getpid()}.log"
    results = []
    for i in range(args.runs):
        seconds, cpu = start_once(args.serve_args, log_path)
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
