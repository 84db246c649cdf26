"""Per-clinic API keys (`Authorization: Bearer KEY`), token-bucket rate limits per key and per
client address, and a limit on failed authentications per client address.

Keys come from `CHEXOPS_API_KEYS` (`clinic:key,clinic2:key2`) or a mounted file named by
`CHEXOPS_API_KEYS_FILE` (the same pairs, one per line or comma-separated; `#` starts a comment), a
Kubernetes Secret's natural form; `chexops.serving.settings` reads both. Both may be given; their keys
are merged. Keys are compared in constant time and never logged; only the clinic name is.

Failed authentications are counted per client address (`auth_failures` a minute, also the burst): over
that, the address is answered 429 with Retry-After for every key it has not already used successfully, so
guessing keys is limited whatever the key. A key that authenticated from that address within the last
`KNOWN_FOR_S` keeps working there (its own rate limit applies): a clinic behind a NAT or a proxy is not locked
out by a neighbour's wrong guesses. While the address is over its limit, a guess is checked only against
the few keys already used from it. The client address is the TCP peer's unless it is one of
`CHEXOPS_TRUSTED_PROXIES`, whose `X-Forwarded-For` is then believed (uvicorn's proxy-headers middleware).
Optionally (`CHEXOPS_ADDRESS_RATE_LIMIT`), every authenticated request also
takes a token from its address's bucket (all the clinics behind one address share it), besides the
token its key takes from its own.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from chexops.core.errors import ConfigError


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
                raise ConfigError(
                    f"{source}: each entry must be clinic:key, got an entry without "
                    f"{'a clinic' if not clinic else 'a key'}."
                )
            if len(key) < 8:
                raise ConfigError(f"{source}: the key of clinic {clinic!r} is shorter than 8 characters.")
            keys[key] = clinic
    return keys


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address (127.0.0.0/8, ::1, localhost)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def require_keys_off_loopback(host: str, api_keys: str, api_keys_file: str) -> None:
    """`ConfigError` (exit 2) when serving on a non-loopback address without configured API keys
    (`CHEXOPS_API_KEYS`, `CHEXOPS_API_KEYS_FILE`): the development key that `chexops serve` would fall
    back on is published in this repository."""
    if not is_loopback(host) and not api_keys.strip() and not api_keys_file.strip():
        raise ConfigError(
            f"refusing to serve on {host} without API keys: the development key is public. Set "
            "CHEXOPS_API_KEYS=clinic:key[,clinic2:key2] or CHEXOPS_API_KEYS_FILE, or serve on 127.0.0.1."
        )


def load_keys(api_keys: str, api_keys_file: str) -> dict[str, str]:
    """{key: clinic} of `CHEXOPS_API_KEYS` (the pairs) and `CHEXOPS_API_KEYS_FILE` (a file of them), merged."""
    keys = parse_keys(api_keys, "CHEXOPS_API_KEYS")
    file = api_keys_file.strip()
    if file:
        try:
            keys.update(parse_keys(Path(file).read_text(), f"CHEXOPS_API_KEYS_FILE {file}"))
        except OSError as exc:
            raise ConfigError(f"CHEXOPS_API_KEYS_FILE {file} cannot be read ({exc.strerror}).") from None
    if not keys:
        raise ConfigError(
            "no API keys: set CHEXOPS_API_KEYS=clinic:key[,clinic2:key2] or CHEXOPS_API_KEYS_FILE "
            "(chexops serve sets a development key when neither is set)."
        )
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

    MAX_BUCKETS = 50_000  # full buckets are forgotten beyond this many (many addresses must not grow memory)

    def take(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        return self._bucket(key, spend=True)

    def wait(self, key: str) -> float:
        """Like `take`, without spending a token."""
        return self._bucket(key, spend=False)

    def _bucket(self, key: str, spend: bool) -> float:
        now = self.clock()
        with self._lock:
            if len(self._buckets) >= self.MAX_BUCKETS and key not in self._buckets:
                self._forget_full(now)
            bucket = self._buckets.setdefault(key, _Bucket(self.burst, now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            if bucket.tokens >= 1:
                bucket.tokens -= spend
                return 0.0
            return (1 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]


def _too_many(wait: float, what: str) -> AuthError:
    retry = max(1, math.ceil(wait))
    return AuthError(f"too many {what}; retry in {retry} s.", status=429, retry_after=retry)


class Authenticator:
    def __init__(
        self,
        keys: dict[str, str],
        limiter: RateLimiter,
        per_address: RateLimiter | None = None,
        failures: RateLimiter | None = None,
    ):
        self.keys = keys
        self.limiter = limiter
        self.per_address = per_address  # None: no limit per address on authenticated requests
        self.failures = failures or RateLimiter(10, 10, limiter.clock)
        self._seen: dict[str, float] = {}  # "address sha256(key)" → when that key last authenticated there
        self._seen_lock = threading.Lock()

    def clinic(self, authorization: str | None, address: str = "") -> str:
        """The clinic of a valid `Bearer` key within its rates; raises `AuthError` (401 / 429) otherwise."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        wait = self.failures.wait(address)
        if wait > 0 and not self._known(address, token):
            raise _too_many(wait, "failed authentications from this address")
        clinic = None
        for key, name in self.keys.items():  # constant time per key: no early exit on a prefix
            if hmac.compare_digest(key.encode(), token.encode()):
                clinic = name
        if scheme.lower() != "bearer" or not token or clinic is None:
            self.failures.take(address)
            raise AuthError(
                "the API key is not valid."
                if scheme.lower() == "bearer" and token
                else "an API key is required: send the header 'Authorization: Bearer YOUR_KEY'."
            )
        wait = self.per_address.take(address) if self.per_address else 0.0
        if wait > 0:
            raise _too_many(wait, "requests from this address")
        wait = self.limiter.take(token)
        if wait > 0:
            raise _too_many(wait, "requests for this API key")
        self._remember(address, token)
        return clinic

    KNOWN_FOR_S = 24 * 3600
    MAX_KNOWN = 50_000

    def _pair(self, address: str, token: str) -> str:
        return address + " " + hashlib.sha256(token.encode()).hexdigest()

    def _known(self, address: str, token: str) -> bool:
        seen = self._seen.get(self._pair(address, token))
        return seen is not None and self.limiter.clock() - seen < self.KNOWN_FOR_S

    def _remember(self, address: str, token: str) -> None:
        with self._seen_lock:
            if len(self._seen) >= self.MAX_KNOWN:
                self._seen.clear()  # rare; a known key is then known again at its next success
            self._seen[self._pair(address, token)] = self.limiter.clock()
