"""Overload: many concurrent clients on `/predict` for a while, and what the service does with them.

`flood(url, key, data, clients=64, seconds=30, pid=PID)` runs `clients` asyncio callers (one
keep-alive connection each, from one pool) that POST the image back to back for `seconds`, and reports:

- answers by status; refusals (429/503) with and without `Retry-After`; any other non-200;
- connection errors (refused, reset, timed out: a request that got no HTTP answer at all);
- latency of the admitted (200) and of the refused requests (p50/p95/max);
- with `pid` (the `bentoml serve` process): the RSS of it and all its descendants before the flood,
  the peak during it (sampled every 0.25 s) and a few seconds after it.

Used by `python -m chexops.benchmarks.serve_bench --flood 30` and by tests/test_overload.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

REFUSALS = (429, 503)


def tree_rss_mb(pid: int) -> float | None:
    """RSS of a process and all its descendants, in MiB (None when it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total = 0
    for member in family:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return round(total / 2**20, 1)


def _latency(seconds: list[float]) -> dict[str, float] | None:
    if not seconds:
        return None
    ms = np.asarray(seconds) * 1000
    return {"n": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "max_ms": round(float(ms.max()), 1)}


async def _flood(url: str, key: str, data: bytes, clients: int, seconds: float, timeout: float,
                 pid: int | None) -> dict[str, Any]:
    import httpx

    statuses: dict[str, int] = {}
    admitted: list[float] = []
    refused: list[float] = []
    no_retry_after: list[int] = []
    not_json: list[int] = []
    connection_errors: dict[str, int] = {}
    rss: list[float] = []
    headers = {"Authorization": f"Bearer {key}"}

    # one client, one pooled keep-alive connection per concurrent caller (a client per caller costs the
    # flooding process more CPU than the requests themselves)
    http = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=clients, max_keepalive_connections=clients))

    async def client() -> None:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/predict", headers=headers,
                                           files={"image": ("image", data, "application/octet-stream")})
            except httpx.TransportError as exc:
                name = type(exc).__name__
                connection_errors[name] = connection_errors.get(name, 0) + 1
                await asyncio.sleep(0.05)
                continue
            elapsed = time.perf_counter() - start
            code = response.status_code
            statuses[str(code)] = statuses.get(str(code), 0) + 1
            if code == 200:
                admitted.append(elapsed)
                continue
            try:
                if not isinstance(response.json().get("error"), str):
                    not_json.append(code)
            except ValueError:
                not_json.append(code)
            if code in REFUSALS:
                refused.append(elapsed)
                retry = response.headers.get("retry-after", "")
                if not retry.isdigit():
                    no_retry_after.append(code)
                # a well-behaved client backs off; a flood keeps the pressure on (a short pause only)
                await asyncio.sleep(0.05 if retry.isdigit() else 0)

    async def sample() -> None:
        while time.monotonic() < deadline:
            value = tree_rss_mb(pid) if pid else None
            if value is not None:
                rss.append(value)
            await asyncio.sleep(0.25)

    deadline = time.monotonic() + seconds
    started = time.perf_counter()
    try:
        await asyncio.gather(*(client() for _ in range(clients)), sample())
    finally:
        await http.aclose()
    wall = time.perf_counter() - started
    other = {k: v for k, v in statuses.items() if k != "200" and int(k) not in REFUSALS}
    return {"clients": clients, "seconds": round(wall, 2), "answers": sum(statuses.values()), "by_status": statuses,
            "ok_per_s": round(len(admitted) / wall, 2), "refused": len(refused),
            "refused_without_retry_after": len(no_retry_after), "errors_not_json": len(not_json),
            "other_status": other, "connection_errors": connection_errors,
            "admitted_latency": _latency(admitted), "refused_latency": _latency(refused),
            "rss_peak_mb": max(rss) if rss else None}


def flood(url: str, key: str, data: bytes, clients: int = 64, seconds: float = 30, timeout: float = 30,
          pid: int | None = None, settle: float = 3.0) -> dict[str, Any]:
    """Flood `/predict` (see the module docstring); RSS before/peak/after when `pid` is given."""
    before = tree_rss_mb(pid) if pid else None
    result = asyncio.run(_flood(url.rstrip("/"), key, data, clients, seconds, timeout, pid))
    if pid:
        time.sleep(settle)
        after = tree_rss_mb(pid)
        result.update({"rss_before_mb": before, "rss_after_mb": after,
                       "rss_growth_mb": round(after - before, 1) if after is not None and before is not None else None})
    return result
