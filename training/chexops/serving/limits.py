"""What one client may cost the service before it is authenticated or admitted: request bodies read whole,
within a size, a deadline and a minimum rate, a few at a time per client; request heads within a size.

`UploadGuard` (ASGI, in front of admission control): every POST body is read to its end before the request
goes on, so a slow upload holds a connection, never an inference slot (`chexops.serving.admission`). A body
over its route's size is a 413 as soon as that is known; one that takes longer than `timeout_s`, or that,
after `GRACE_S`, arrives slower than `min_rate` bytes a second on average, is a 408 and its connection is
closed. At most `per_client` bodies are received at once per `Authorization` value, and `ADDRESS_SHARE` times
that per client address (several clinics may share one NAT address); 429 beyond: one client's slow uploads
cannot fill the server's memory either.

`limit_header_size(max_bytes)`: uvicorn's httptools protocol (what BentoML's workers run) reads a request
head of any size (llhttp has no limit; 8 connections with 40 MB headers grew a worker by 370 MB). The patched
protocol counts the head's bytes as they arrive, before the parser buffers them, and answers 431 with the
connection closed once the head is over `max_bytes`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

from starlette.responses import JSONResponse

log = logging.getLogger("chexops.serving")

GRACE_S = 2.0  # a body's first seconds are not held to the minimum rate (TCP slow start, a busy client)
FEEDBACK_BODY_LIMIT = 64 * 1024  # a feedback is {request_id, correct, labels, note ≤ 2000 characters}
ADDRESS_SHARE = 4  # an address may carry this many keys' uploads at once
HEAD_PIECE = 8 * 1024  # the head is fed to the parser in pieces this big, counted before each


class SlowBody(Exception):
    pass


class TooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(limit)
        self.limit = limit


class UploadGuard:
    """ASGI middleware: every POST body read whole, within `limits` (path → bytes, `default` otherwise),
    `timeout_s` and `min_rate` (bytes/s), at most `per_client` at once per address and per key presented.
    `on_refuse(reason)` counts refusals (metrics); `too_large(limit)` words a 413."""

    def __init__(
        self,
        app,
        default: int,
        limits: dict[str, int],
        timeout_s: float,
        min_rate: float,
        per_client: int,
        too_large,
        on_refuse=None,
    ):
        self.app, self.default, self.limits = app, default, limits
        self.timeout_s, self.min_rate, self.per_client = timeout_s, min_rate, per_client
        self.too_large, self.on_refuse = too_large, on_refuse
        self.receiving: Counter[Any] = Counter()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope.get("path"), self.default)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await self._refuse(scope, receive, send, 413, self.too_large(limit), "size")
        client = ("address", (scope.get("client") or ("", 0))[0])
        key = ("key", headers.get(b"authorization", b""))
        mine = [client] + ([key] if key[1] else [])
        if self.receiving[client] >= self.per_client * ADDRESS_SHARE or self.receiving[key] >= self.per_client:
            return await self._refuse(
                scope,
                receive,
                send,
                429,
                "too many uploads at once from this client; retry when one is done.",
                "uploads",
                {"Retry-After": "1"},
            )
        for who in mine:
            self.receiving[who] += 1
        try:
            body = await self._read(receive, limit)
        except TooLarge as exc:
            return await self._refuse(scope, receive, send, 413, self.too_large(exc.limit), "size")
        except SlowBody as exc:
            log.info("%s: a request body too slow, refused with 408 (%s)", scope.get("path"), exc)
            return await self._refuse(
                scope, receive, send, 408, f"the request body arrived too slowly ({exc}).", "slow"
            )
        finally:
            for who in mine:
                self.receiving[who] -= 1
                if not self.receiving[who]:
                    del self.receiving[who]
        if body is None:  # the client went away
            return None
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _read(self, receive, limit: int) -> bytes | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.timeout_s
        chunks, received = [], 0
        while True:
            # the time by which more bytes must have come: the rate's, never past the deadline
            due = deadline if not self.min_rate else min(deadline, started + GRACE_S + received / self.min_rate)
            try:
                async with asyncio.timeout(max(0.0, due - loop.time())):
                    message = await receive()
            except TimeoutError:
                elapsed = loop.time() - started
                if due >= deadline:
                    raise SlowBody(
                        f"{received} bytes in {elapsed:.0f} s, over the {self.timeout_s:g} s limit"
                    ) from None
                raise SlowBody(
                    f"{received} bytes in {elapsed:.1f} s, under the minimum of {self.min_rate / 1024:g} KiB/s"
                ) from None
            if message["type"] == "http.disconnect":
                return None
            piece = message.get("body", b"")
            received += len(piece)
            if received > limit:
                raise TooLarge(limit)
            chunks.append(piece)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope, receive, send, status, message, reason, headers=None):  # noqa: ARG002
        if self.on_refuse is not None:
            self.on_refuse(reason)
        response = JSONResponse(
            {"error": message}, status_code=status, headers={"Connection": "close", **(headers or {})}
        )
        return await response(scope, receive, send)


# --- request heads -----------------------------------------------------------------------------------


def limit_header_size(max_bytes: int) -> None:
    """Patch uvicorn's httptools protocol: a request head over `max_bytes` is a 431, its connection closed."""
    from uvicorn.protocols.http import httptools_impl

    protocol = httptools_impl.HttpToolsProtocol
    protocol._chexops_max_head = max_bytes  # noqa: SLF001 - our own attribute
    if getattr(protocol, "_chexops_limits_head", False):
        return
    data_received, on_headers_complete, on_message_complete = (
        protocol.data_received,
        protocol.on_headers_complete,
        protocol.on_message_complete,
    )

    def patched_data_received(self, data: bytes) -> None:
        while data and not getattr(self, "_chexops_head_done", False):
            count = getattr(self, "_chexops_head_bytes", 0)
            if count >= self._chexops_max_head:
                return _refuse_head(self)
            piece, data = data[:HEAD_PIECE], data[HEAD_PIECE:]
            self._chexops_head_bytes = count + len(piece)
            data_received(self, piece)
            if self.transport.is_closing():
                return None
        if data:
            data_received(self, data)
        return None

    def patched_headers_complete(self) -> None:
        self._chexops_head_done = True
        return on_headers_complete(self)

    def patched_message_complete(self) -> None:
        self._chexops_head_done, self._chexops_head_bytes = False, 0
        return on_message_complete(self)

    protocol.data_received = patched_data_received
    protocol.on_headers_complete = patched_headers_complete
    protocol.on_message_complete = patched_message_complete
    protocol._chexops_limits_head = True  # noqa: SLF001 - our own marker


def _refuse_head(protocol) -> None:
    body = json.dumps(
        {"error": f"the request's headers are over the limit of {protocol._chexops_max_head // 1024} KiB."}  # noqa: SLF001
    ).encode()
    protocol.transport.write(
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
        + body
    )
    protocol.transport.close()
    log.info("a request head over %d bytes refused with 431", protocol._chexops_max_head)  # noqa: SLF001
