"""A fix for the pinned BentoML (1.4.40), applied when the service module loads.

BentoML's request timeout (`traffic.timeout`, `bentoml._internal.server.http.traffic.TimeoutMiddleware`)
schedules a timer for every request and never cancels it: each answered request stays referenced
(its future, and through the timer's context its tracing span and scope) until the timer fires,
`timeout` seconds later. Memory then grows with the request rate times the timeout: under a flood of
fast 503 refusals (about 900 a second on the 2-core VM) the worker held about 250 MiB more before it
levelled off. `cancel_traffic_timers()` replaces the middleware's `__call__` with the same logic
that cancels its timer when the request ends, and stops waiting when the app ends without an answer (a
client that went away during its upload). tests/test_overload.py checks that no timer survives.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


def cancel_traffic_timers() -> None:
    from bentoml._internal.server.http import traffic
    from starlette.responses import JSONResponse

    middleware = traffic.TimeoutMiddleware
    if getattr(middleware, "_chexops_cancels_timers", False):
        return

    async def __call__(self, scope, receive, send) -> None:  # the upstream body, plus timer.cancel()  # noqa: N807 - it replaces the middleware's __call__
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        # An app that ends without answering (its client went away mid-body) ends the wait too: upstream, the
        # request then stayed for the whole timeout, and held the server's shutdown as long.
        fut.add_done_callback(lambda _: waiter.done() or waiter.set_result(None))
        try:
            await waiter
        except asyncio.TimeoutError:
            if fut.cancel():
                resp = JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504
                )
                await resp(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()

    middleware.__call__ = __call__
    middleware._chexops_cancels_timers = True  # noqa: SLF001 - our own marker
    log.debug("BentoML's TimeoutMiddleware now cancels its timer when a request ends")
