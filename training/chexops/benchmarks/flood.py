"""Overload: many concurrent clients on `/predict` for a while, and what the service does with them.

`flood(url, key, data, clients=64, seconds=30, pid=PID)` runs `clients` asyncio callers (one
keep-alive connection each, sending one prepared request) that POST the image back to back for
`seconds`, and reports:

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
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "max_ms": round(float(ms.max()), 1),
    }


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a prepared request: the flooding process spends
    its CPU on sockets, not on building multipart bodies (httpx costs it more CPU than the service
    spends refusing)."""

    def __init__(self, host: str, port: int, request: bytes, timeout: float):
        self.host, self.port, self.request, self.timeout = host, port, request, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout
            )
        try:
            return await asyncio.wait_for(self._exchange(), self.timeout)
        except BaseException:
            self.close()
            raise

    async def _exchange(self) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(self.request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(status_line.split()[1]), headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def prepared_request(url: str, key: str, data: bytes) -> tuple[str, int, bytes]:
    """(host, port, the bytes of one multipart POST /predict carrying `data`)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    boundary = "chexopsflood7f3a9c"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="image"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {parts.path.rstrip('/')}/predict HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return parts.hostname or "127.0.0.1", parts.port or 80, head + body


async def _flood(
    url: str, key: str, data: bytes, clients: int, seconds: float, timeout: float, pid: int | None
) -> dict[str, Any]:
    import json

    statuses: dict[str, int] = {}
    admitted: list[float] = []
    refused: list[float] = []
    no_retry_after: list[int] = []
    not_json: list[int] = []
    connection_errors: dict[str, int] = {}
    rss: list[float] = []
    host, port, request = prepared_request(url, key, data)

    async def client() -> None:
        connection = Connection(host, port, request, timeout)
        try:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    code, headers, body = await connection.post()
                except (
                    OSError,
                    asyncio.TimeoutError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    ValueError,
                ) as exc:
                    name = type(exc).__name__
                    connection_errors[name] = connection_errors.get(name, 0) + 1
                    await asyncio.sleep(0.05)
                    continue
                elapsed = time.perf_counter() - start
                statuses[str(code)] = statuses.get(str(code), 0) + 1
                if code == 200:
                    admitted.append(elapsed)
                    continue
                try:
                    if not isinstance(json.loads(body).get("error"), str):
                        not_json.append(code)
                except (ValueError, AttributeError):
                    not_json.append(code)
                if code in REFUSALS:
                    refused.append(elapsed)
                    retry = headers.get("retry-after", "")
                    if not retry.isdigit():
                        no_retry_after.append(code)
                    # a well-behaved client backs off; a flood keeps the pressure on (a short pause only)
                    await asyncio.sleep(0.05 if retry.isdigit() else 0)
        finally:
            connection.close()

    async def sample() -> None:
        while time.monotonic() < deadline:
            value = tree_rss_mb(pid) if pid else None
            if value is not None:
                rss.append(value)
            await asyncio.sleep(0.25)

    deadline = time.monotonic() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)), sample())
    wall = time.perf_counter() - started
    other = {k: v for k, v in statuses.items() if k != "200" and int(k) not in REFUSALS}
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "answers": sum(statuses.values()),
        "by_status": statuses,
        "ok_per_s": round(len(admitted) / wall, 2),
        "refused": len(refused),
        "refused_without_retry_after": len(no_retry_after),
        "errors_not_json": len(not_json),
        "other_status": other,
        "connection_errors": connection_errors,
        "admitted_latency": _latency(admitted),
        "refused_latency": _latency(refused),
        "rss_peak_mb": max(rss) if rss else None,
    }


def flood(
    url: str,
    key: str,
    data: bytes,
    clients: int = 64,
    seconds: float = 30,
    timeout: float = 30,
    pid: int | None = None,
    settle: float = 3.0,
) -> dict[str, Any]:
    """Flood `/predict` (see the module docstring); RSS before/peak/after when `pid` is given."""
    before = tree_rss_mb(pid) if pid else None
    result = asyncio.run(_flood(url.rstrip("/"), key, data, clients, seconds, timeout, pid))
    if pid:
        time.sleep(settle)
        after = tree_rss_mb(pid)
        result.update(
            {
                "rss_before_mb": before,
                "rss_after_mb": after,
                "rss_growth_mb": round(after - before, 1) if after is not None and before is not None else None,
            }
        )
    return result
