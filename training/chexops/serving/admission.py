"""Admission control in front of inference: bounded work in flight, a bounded queue, a bounded wait.

An ASGI middleware on the expensive routes (`/predict`, `/explain`). At most `max_inflight` of their
requests run at once (upload, decode, preprocess, inference, store); up to `max_queue` more wait, in
arrival order, each for at most `queue_timeout_ms` (a request whose expected wait, from its place
in the queue and the recent service time, is longer is not queued). Everything else is refused at once with
`503 {"error": ...}` and a `Retry-After` (seconds, from the recent service time and the queue's
length), without keeping its body: memory and latency stay bounded however many clients arrive, and
an admitted request waits at most the timeout before it starts. (Per-key rate limits are the 429s of
`chexops.serving.auth`; this is the service's own capacity.) The limits are `CHEXOPS_MAX_INFLIGHT`,
`CHEXOPS_MAX_QUEUE` and `CHEXOPS_QUEUE_TIMEOUT_MS` (`chexops.serving.settings`, `Settings.admission_limits`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Callable

from starlette.responses import JSONResponse

log = logging.getLogger("chexops.serving")

GUARDED = ("/predict", "/explain")


@dataclass(frozen=True)
class AdmissionLimits:
    max_inflight: int
    max_queue: int
    queue_timeout_ms: int


class Overloaded(Exception):
    def __init__(self, why: str, retry_after: int):
        super().__init__(why)
        self.retry_after = retry_after


class Gate:
    """A FIFO semaphore with a bounded queue and a bounded wait (one event loop, no threads)."""

    def __init__(self, limits: AdmissionLimits):
        self.limits = limits
        self.inflight = 0
        self.waiters: deque[asyncio.Future] = deque()
        self.service_s = 0.05  # moving average of an admitted request's time, for Retry-After

    def retry_after(self) -> int:
        backlog = self.inflight + len(self.waiters)
        return max(1, min(60, math.ceil(backlog * self.service_s / self.limits.max_inflight)))

    async def acquire(self) -> None:
        if self.inflight < self.limits.max_inflight and not self.waiters:
            self.inflight += 1
            return
        if len(self.waiters) >= self.limits.max_queue:
            raise Overloaded(
                f"{self.inflight} requests in progress and {len(self.waiters)} waiting", self.retry_after()
            )
        expected = (len(self.waiters) + 1) * self.service_s / self.limits.max_inflight
        if expected * 1000 > self.limits.queue_timeout_ms:  # it would time out in the queue: say so now
            raise Overloaded(
                f"the expected wait, {expected * 1000:.0f} ms, is over {self.limits.queue_timeout_ms} ms",
                self.retry_after(),
            )
        slot = asyncio.get_running_loop().create_future()
        self.waiters.append(slot)
        try:
            async with asyncio.timeout(self.limits.queue_timeout_ms / 1000):
                await slot
        except TimeoutError:
            if slot.done() and not slot.cancelled():
                return  # the slot was handed over just as the wait ran out: take it
            self._forget(slot)
            raise Overloaded(f"no slot within {self.limits.queue_timeout_ms} ms", self.retry_after()) from None
        except BaseException:  # the client went away while waiting
            if slot.done() and not slot.cancelled():
                self.release()
            else:
                self._forget(slot)
            raise

    def release(self, seconds: float | None = None) -> None:
        if seconds is not None:
            self.service_s = 0.8 * self.service_s + 0.2 * seconds
        while self.waiters:
            slot = self.waiters.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot passes to the oldest waiter: in-flight count unchanged
                return
        self.inflight -= 1

    def _forget(self, slot: asyncio.Future) -> None:
        try:
            self.waiters.remove(slot)
        except ValueError:
            pass


class Admission:
    """ASGI middleware: `Gate` on the `paths`; a refusal is a JSON 503 with `Retry-After`.
    `on_refuse(path)` is called for each refusal (metrics)."""

    def __init__(
        self,
        app,
        limits: AdmissionLimits,
        paths: tuple[str, ...] = GUARDED,
        on_refuse: Callable[[str], None] | None = None,
    ):
        self.app, self.paths, self.on_refuse = app, paths, on_refuse
        self.gate = Gate(limits)
        self.refused, self.logged_at = 0, 0.0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        try:
            await self.gate.acquire()
        except Overloaded as exc:
            if self.on_refuse is not None:
                self.on_refuse(scope["path"])
            self.refused += 1
            if loop.time() - self.logged_at >= 5:  # one line per 5 s under a flood, not one per refusal
                log.warning(
                    "overloaded: %d request(s) refused with 503 since the last report (now %s)", self.refused, exc
                )
                self.refused, self.logged_at = 0, loop.time()
            response = JSONResponse(
                {"error": f"the service is at capacity ({exc}); retry in {exc.retry_after} s."},
                status_code=503,
                headers={"Retry-After": str(exc.retry_after)},
            )
            await _drain(receive)
            return await response(scope, receive, send)
        started = loop.time()
        try:
            return await self.app(scope, receive, send)
        finally:
            self.gate.release(loop.time() - started)


async def _drain(receive) -> None:
    """Read the rest of a refused upload and drop it (the body limit still applies). Answering first
    would start the connection's keep-alive timer while the client is still sending: on a starved
    event loop the server then closes a connection the client is using (a ReadError, not a 503)."""
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
    except Exception:  # noqa: BLE001 - over the body limit, or the client went away: answer anyway
        return
