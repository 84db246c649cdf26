"""`chexops verify-serving`: is the endpoint serving the version that was promoted?

Polls `GET /model` until `consecutive` answers in a row report registry version N (behind a Service
each answer may come from another pod; one stale pod breaks the run of answers). With `hold`, it
then keeps asking for that many seconds (the production verification): any answer from another
version, or `max_errors` failed answers in a row, fails it. Exit 0 when verified, 3 when not, with
every version seen and how often.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from chexops.core.results import Result

log = logging.getLogger(__name__)


class ServingCheck(Result):
    """What the endpoint answered: the versions seen (and how often), and whether N was verified."""

    url: str
    version: str
    verified: bool
    seen: dict[str, int]
    errors: int
    consecutive: int
    held_s: float
    seconds: float
    message: str
    freight: dict[str, str] | None = None


def _ask(client, url: str) -> tuple[str | None, dict[str, str] | None, str | None]:
    """(version, freight, error) of one GET /model."""
    import httpx

    try:
        response = client.get(f"{url}/model")
    except httpx.HTTPError as exc:
        return None, None, f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return None, None, f"HTTP {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return None, None, "an answer that is not JSON"
    freight = body.get("freight") if isinstance(body.get("freight"), dict) else None
    return str(body.get("version", "")), freight, None


def verify_serving(
    url: str,
    version: str,
    *,
    timeout: float = 300,
    consecutive: int = 5,
    hold: float = 0,
    max_errors: int = 3,
    interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> ServingCheck:
    """Wait until `consecutive` answers in a row are `version`, then hold it for `hold` seconds."""
    import httpx

    url = url.rstrip("/")
    seen: Counter[str] = Counter()
    errors = streak = failing = 0
    freight = None
    last_error = ""
    start = clock()
    verified_at: float | None = None

    def result(ok: bool, message: str) -> ServingCheck:
        (log.info if ok else log.error)("%s: %s", url, message)
        return ServingCheck(
            url=url,
            version=version,
            verified=ok,
            seen=dict(seen),
            errors=errors,
            consecutive=streak,
            held_s=round(clock() - verified_at, 1) if verified_at is not None else 0.0,
            seconds=round(clock() - start, 1),
            message=message,
            freight=freight,
        )

    def versions() -> str:
        return ", ".join(f"version {v} x{n}" for v, n in sorted(seen.items())) or "no version"

    with httpx.Client(timeout=10) as client:
        while True:
            answered, freight_now, error = _ask(client, url)
            if error is not None:
                errors += 1
                failing += 1
                last_error = error
                streak = 0 if verified_at is None else streak
            else:
                failing = 0
                seen[answered] += 1
                if answered == version:
                    streak += 1
                    freight = freight_now or freight
                elif verified_at is not None:
                    return result(
                        False, f"after verifying version {version}, an answer came from {answered} ({versions()})"
                    )
                else:
                    streak = 0
            if verified_at is not None and failing >= max_errors:
                return result(False, f"{failing} failed answers in a row while holding version {version}: {last_error}")
            if verified_at is None and streak >= consecutive:
                verified_at = clock()
                log.info("%s serves version %s (%d answers in a row)", url, version, streak)
            if verified_at is not None and clock() - verified_at >= hold:
                held = f", held for {hold:.0f} s" if hold else ""
                return result(True, f"serving version {version}: {streak} answers in a row{held} ({versions()})")
            if verified_at is None and clock() - start >= timeout:
                why = f"; last error: {last_error}" if last_error else ""
                return result(
                    False,
                    f"not serving version {version} after {timeout:.0f} s: saw {versions()}, {errors} errors{why}",
                )
            time.sleep(interval)
