"""Per-clinic API keys (`Authorization: Bearer KEY`) and a per-key token-bucket rate limit.

Keys come from `CHEXOPS_API_KEYS` (`clinic:key,clinic2:key2`) or a mounted file named by
`CHEXOPS_API_KEYS_FILE` (the same pairs, one per line or comma-separated; `#` starts a comment), a
Kubernetes Secret's natural form. Both may be given; their keys are merged. Keys are compared in
constant time and never logged; only the clinic name is.
"""

from __future__ import annotations

import hmac
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError


def parse_keys(text: str, source: str) -> dict[str, str]:
    """`clinic:key` pairs (comma- or newline-separated) → {key: clinic}."""
    keys: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for pair in line.split(","):
            pair = pair.strip()
            if not pair:
                continue
            clinic, sep, key = pair.partition(":")
            clinic, key = clinic.strip(), key.strip()
            if not sep or not clinic or not key:
                raise ConfigError(f"{source}: each entry must be clinic:key, got an entry without "
                                  f"{'a clinic' if not clinic else 'a key'}.")
            if len(key) < 8:
                raise ConfigError(f"{source}: the key of clinic {clinic!r} is shorter than 8 characters.")
            keys[key] = clinic
    return keys


def load_keys(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    keys = parse_keys(env.get("CHEXOPS_API_KEYS", ""), "CHEXOPS_API_KEYS")
    file = env.get("CHEXOPS_API_KEYS_FILE", "").strip()
    if file:
        try:
            keys.update(parse_keys(Path(file).read_text(), f"CHEXOPS_API_KEYS_FILE {file}"))
        except OSError as exc:
            raise ConfigError(f"CHEXOPS_API_KEYS_FILE {file} cannot be read ({exc.strerror}).") from None
    if not keys:
        raise ConfigError("no API keys: set CHEXOPS_API_KEYS=clinic:key[,clinic2:key2] or CHEXOPS_API_KEYS_FILE "
                          "(chexops serve sets a development key when neither is set).")
    return keys


class AuthError(Exception):
    def __init__(self, message: str, status: int = 401, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per key: `burst` tokens, refilled at `per_minute` / 60 tokens a second."""

    def __init__(self, per_minute: float, burst: int, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket(self.burst, now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / self.rate


class Authenticator:
    def __init__(self, keys: dict[str, str], limiter: RateLimiter):
        self.keys = keys
        self.limiter = limiter

    def clinic(self, authorization: str | None) -> str:
        """The clinic of a valid `Bearer` key within its rate; raises `AuthError` (401 / 429) otherwise."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("an API key is required: send the header 'Authorization: Bearer YOUR_KEY'.")
        clinic = None
        for key, name in self.keys.items():  # constant time per key: no early exit on a prefix
            if hmac.compare_digest(key.encode(), token.encode()):
                clinic = name
        if clinic is None:
            raise AuthError("the API key is not valid.")
        wait = self.limiter.take(token)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise AuthError(f"too many requests for this API key; retry in {retry} s.", status=429, retry_after=retry)
        return clinic
