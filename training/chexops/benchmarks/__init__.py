"""Benchmark scripts (`python -m chexops.benchmarks.NAME`), whose numbers go into docs/benchmarks.md.
May import every stage below the CLI.
"""

from __future__ import annotations

from typing import Any


def stats(seconds: list[float]) -> dict[str, float]:
    """Latency statistics of call durations in seconds: n, p50, p95, mean and max in milliseconds."""
    import numpy as np

    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def process_tree_cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by process `pid` and its live children; None: this process."""
    import time

    if pid is None:
        return time.process_time()
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            t = process.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def cpu_ms_per_call(pid: int | None, calls: int, work) -> tuple[Any, float]:
    """`work()`'s result and the CPU-ms per call it cost process `pid`'s tree (None: this process)."""
    before = process_tree_cpu(pid)
    value = work()
    return value, round((process_tree_cpu(pid) - before) * 1000 / max(calls, 1), 2)


def timed_calls(once, runs: int, warmup: int) -> list[float]:
    """Seconds of each of `runs` sequential calls of `once`, after `warmup` untimed ones."""
    import time

    for _ in range(warmup):
        once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return times


def run_threads(threads) -> float:
    """Start `threads` (threading.Thread objects), wait for all; the seconds that took."""
    import time

    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def concurrent_calls(once, concurrency: int, requests: int) -> tuple[list[float], float]:
    """`requests` calls of `once` from `concurrency` threads: the seconds of each call, and the wall time."""
    import threading
    import time

    counter, lock, times = iter(range(requests)), threading.Lock(), []

    def worker() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            start = time.perf_counter()
            once()
            with lock:
                times.append(time.perf_counter() - start)

    wall = run_threads([threading.Thread(target=worker) for _ in range(concurrency)])
    return times, wall


def emit(result: dict[str, Any], module: str, argv: list[str] | None, started: float, table=None) -> None:
    """Print a benchmark's result as one JSON object on stdout, with its command and duration (since the
    `time.monotonic()` value `started`); `table(result)`, when given, the markdown rows on stderr."""
    import json
    import sys
    import time

    args = sys.argv[1:] if argv is None else argv
    result.update({"command": f"python -m chexops.benchmarks.{module} " + " ".join(args)})
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2, default=str))
    if table is not None:
        print(table(result), file=sys.stderr)
