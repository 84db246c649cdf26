"""HTTP clients of `/predict`: sequential requests on one keep-alive connection, and concurrent ones from
threads (one keep-alive client each); a request that does not answer 200 is counted by status, not a crash."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from chexops.benchmarks import run_threads, stats


class ServiceError(RuntimeError):
    pass


def _post(client, url: str, key: str, data: bytes) -> tuple[int, dict]:
    """(status, JSON body) of one /predict; status 0 when the connection failed (reset, refused, timed
    out). A 401 or 429 is the benchmark's own misconfiguration: it stops."""
    import httpx

    try:
        response = client.post(
            f"{url}/predict",
            headers={"Authorization": f"Bearer {key}"},
            files={"image": ("image", data, "application/octet-stream")},
        )
    except httpx.TransportError as exc:
        return 0, {"error": f"connection: {type(exc).__name__}: {exc}"}
    if response.status_code in (401, 429):
        hint = (
            " (raise the service's CHEXOPS_RATE_LIMIT / CHEXOPS_RATE_BURST for a benchmark)"
            if response.status_code == 429
            else ""
        )
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
    return {
        **stats(times),
        "concurrency": concurrency,
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(times) / wall, 2),
        "errors": failures.report(),
    }
