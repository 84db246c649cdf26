"""Fault injection for testing the canary analysis: a faulty canary on purpose, never in production.

    CHEXOPS_FAULT_INJECTION="error_rate=0.5,delay_ms=300"

`delay_ms` is added to every clinical request (/predict, /explain, /feedback); `error_rate` of them
are then answered 500. Refused (ConfigError) when CHEXOPS_ENVIRONMENT is production; announced at
start-up and counted as `chexops_injected_faults_total`, so a faulty service never passes unnoticed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

from chexops.core.errors import ConfigError

log = logging.getLogger("chexops.serving")

PATHS = ("/predict", "/explain", "/feedback")


@dataclass(frozen=True)
class FaultSpec:
    error_rate: float = 0.0
    delay_ms: int = 0

    def __str__(self) -> str:
        return f"error_rate={self.error_rate},delay_ms={self.delay_ms}"


def parse_faults(raw: str, environment: str) -> FaultSpec | None:
    """`error_rate=R,delay_ms=N` (either may be absent) → FaultSpec; empty → None."""
    raw = raw.strip()
    if not raw:
        return None
    if environment == "production":
        raise ConfigError(
            "CHEXOPS_FAULT_INJECTION is refused when CHEXOPS_ENVIRONMENT is production: it exists only to test "
            "the canary analysis."
        )
    values: dict[str, float] = {}
    for part in raw.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("error_rate", "delay_ms"):
            raise ConfigError(f"CHEXOPS_FAULT_INJECTION: {part.strip()!r} is not error_rate=R or delay_ms=N.")
        try:
            values[key] = float(value)
        except ValueError:
            raise ConfigError(f"CHEXOPS_FAULT_INJECTION: {key} must be a number, got {value.strip()!r}.") from None
    spec = FaultSpec(values.get("error_rate", 0.0), int(values.get("delay_ms", 0)))
    if not 0.0 <= spec.error_rate <= 1.0 or spec.delay_ms < 0 or spec.delay_ms > 60_000:
        raise ConfigError(
            f"CHEXOPS_FAULT_INJECTION: error_rate must be within 0..1 and delay_ms within 0..60000, got {spec}."
        )
    return spec


class FaultInjection:
    """ASGI middleware: delays and fails clinical requests as the spec says."""

    def __init__(self, app, spec: FaultSpec, owner=None):
        self.app, self.spec, self.owner = app, spec, owner
        self.random = random.Random()
        log.warning("FAULT INJECTION IS ON (%s): this service fails on purpose; for canary-analysis tests only", spec)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") not in PATHS:
            return await self.app(scope, receive, send)
        if self.spec.delay_ms:
            await asyncio.sleep(self.spec.delay_ms / 1000)
        if self.random.random() < self.spec.error_rate:
            backend = getattr(self.owner.state, "backend", None) if self.owner is not None else None
            if backend is not None:
                backend.metrics.injected.labels(kind="error").inc()
            from starlette.responses import JSONResponse

            response = JSONResponse({"error": "injected fault (CHEXOPS_FAULT_INJECTION)"}, status_code=500)
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)
