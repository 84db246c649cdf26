"""Benchmark scripts (`python -m chexops.benchmarks.NAME`), whose numbers go into docs/benchmarks.md.
May import every stage below the CLI.
"""

from __future__ import annotations


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
