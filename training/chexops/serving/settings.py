"""The service's configuration: environment variables only (a container's natural interface)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from chexops.core import paths
from chexops.core.errors import ConfigError
from chexops.imaging.decode import ImageLimits
from chexops.core.names import DEFAULT_SERVE_REF
from chexops.serving.faults import FaultSpec, parse_faults

DEFAULT_MODEL = DEFAULT_SERVE_REF  # resolved to an exact Bento model by chexops.export.bento.serving_tag
DEV_KEYS = "dev:chexops-dev-key"
TRACKS = ("stable", "canary")


def _int(name: str, default: int, low: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}.") from None
    if value < low:
        raise ConfigError(f"{name} must be at least {low}, got {value}.")
    return value


def _float(name: str, default: float, low: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}.") from None
    if value <= low:
        raise ConfigError(f"{name} must be above {low}, got {value}.")
    return value


@dataclass(frozen=True)
class Settings:
    """What the service reads from its environment (see the table in bentos/README.md)."""

    model_tag: str = DEFAULT_MODEL          # CHEXOPS_MODEL: models:/NAME@ALIAS, models:/NAME/VERSION or a Bento tag NAME:VERSION
    precision: str = "fp32"                 # CHEXOPS_PRECISION: fp32 | int8
    threads: int = 2                        # CHEXOPS_THREADS: ONNX Runtime intra-op threads
    batching: bool = False                  # CHEXOPS_BATCHING: 1 batches requests through /infer (off: bentos/README.md)
    max_batch_size: int = 16                # CHEXOPS_MAX_BATCH_SIZE
    max_latency_ms: int = 2000              # CHEXOPS_MAX_LATENCY_MS: adaptive batching's latency budget
    max_upload_bytes: int = 20 * 2**20      # CHEXOPS_MAX_UPLOAD_MB
    max_pixels: int = 40_000_000            # CHEXOPS_MAX_PIXELS: decompression-bomb limit
    modalities: frozenset[str] = field(default_factory=lambda: frozenset({"CR", "DX"}))  # CHEXOPS_MODALITIES
    rate_per_minute: float = 120.0          # CHEXOPS_RATE_LIMIT: requests per minute per API key
    rate_burst: int = 20                    # CHEXOPS_RATE_BURST
    address_rate_per_minute: int = 0        # CHEXOPS_ADDRESS_RATE_LIMIT: requests per minute per client address (0: no such limit)
    address_burst: int = 80                 # CHEXOPS_ADDRESS_RATE_BURST
    auth_failures_per_minute: int = 10      # CHEXOPS_AUTH_FAILURE_LIMIT: failed authentications per minute per address (also the burst)
    feedback_url: str = ""                  # CHEXOPS_FEEDBACK_URL: postgresql://... or sqlite:///path
    stored_image_side: int = 1024           # CHEXOPS_FEEDBACK_IMAGE_SIDE: longest side kept (0: full size)
    static_dir: Path = paths.ROOT / "bentos" / "static"  # CHEXOPS_STATIC_DIR
    environment: str = "development"        # CHEXOPS_ENVIRONMENT: staging | production | ... (a metrics label)
    track: str = "stable"                   # CHEXOPS_TRACK: stable | canary (a metrics label)
    faults: FaultSpec | None = None         # CHEXOPS_FAULT_INJECTION: tests of the canary analysis only; never production

    @classmethod
    def from_env(cls) -> "Settings":
        precision = os.environ.get("CHEXOPS_PRECISION", "fp32").strip().lower() or "fp32"
        if precision not in ("fp32", "int8"):
            raise ConfigError(f"CHEXOPS_PRECISION must be fp32 or int8, got {precision!r}.")
        modalities = os.environ.get("CHEXOPS_MODALITIES", "CR,DX")
        environment = os.environ.get("CHEXOPS_ENVIRONMENT", "").strip().lower() or "development"
        track = os.environ.get("CHEXOPS_TRACK", "").strip().lower() or "stable"
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", environment):
            raise ConfigError(f"CHEXOPS_ENVIRONMENT must be a short lower-case name (staging, production, ...), got {environment!r}.")
        if track not in TRACKS:
            raise ConfigError(f"CHEXOPS_TRACK must be one of {', '.join(TRACKS)}, got {track!r}.")
        return cls(
            model_tag=os.environ.get("CHEXOPS_MODEL", "").strip() or DEFAULT_MODEL,
            precision=precision,
            threads=_int("CHEXOPS_THREADS", 2, low=1),
            batching=os.environ.get("CHEXOPS_BATCHING", "0").strip().lower() not in ("0", "false", "no", "off"),
            max_batch_size=_int("CHEXOPS_MAX_BATCH_SIZE", 16, low=1),
            max_latency_ms=_int("CHEXOPS_MAX_LATENCY_MS", 2000, low=1),
            max_upload_bytes=int(_float("CHEXOPS_MAX_UPLOAD_MB", 20.0) * 2**20),
            max_pixels=_int("CHEXOPS_MAX_PIXELS", 40_000_000, low=256),
            modalities=frozenset(m.strip().upper() for m in modalities.split(",") if m.strip()),
            rate_per_minute=_float("CHEXOPS_RATE_LIMIT", 120.0),
            rate_burst=_int("CHEXOPS_RATE_BURST", 20, low=1),
            address_rate_per_minute=_int("CHEXOPS_ADDRESS_RATE_LIMIT", 0),
            address_burst=_int("CHEXOPS_ADDRESS_RATE_BURST", 80, low=1),
            auth_failures_per_minute=_int("CHEXOPS_AUTH_FAILURE_LIMIT", 10, low=1),
            feedback_url=os.environ.get("CHEXOPS_FEEDBACK_URL", "").strip(),
            stored_image_side=_int("CHEXOPS_FEEDBACK_IMAGE_SIDE", 1024),
            static_dir=Path(os.environ.get("CHEXOPS_STATIC_DIR", "") or cls.static_dir),
            environment=environment, track=track, faults=parse_faults(os.environ.get("CHEXOPS_FAULT_INJECTION", ""), environment),
        )

    def authenticator(self, keys: dict[str, str]):
        """API keys with this configuration's rate limits (per key, per address, failures per address)."""
        from chexops.serving.auth import Authenticator, RateLimiter

        return Authenticator(keys, RateLimiter(self.rate_per_minute, self.rate_burst),
                             RateLimiter(self.address_rate_per_minute, self.address_burst) if self.address_rate_per_minute else None,
                             RateLimiter(self.auth_failures_per_minute, self.auth_failures_per_minute))

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_upload_bytes, max_pixels=self.max_pixels, modalities=self.modalities)

    def feedback_location(self) -> str:
        """The feedback store: CHEXOPS_FEEDBACK_URL, else SQLite at $CHEXOPS_HOME/feedback/feedback.db."""
        return self.feedback_url or f"sqlite:///{paths.home() / 'feedback' / 'feedback.db'}"
