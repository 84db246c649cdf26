"""The service's configuration: environment variables only (a container's natural interface).

`Settings` declares every `CHEXOPS_*` variable the service reads, once: its type, default and meaning.
A blank value means the default; a bad one is a `ConfigError` naming the variable. `settings_table()` is
the table of variables in bentos/README.md (tests/test_settings.py keeps the two equal).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from chexops.core import paths
from chexops.core.errors import ConfigError
from chexops.core.names import DEFAULT_SERVE_REF
from chexops.imaging.decode import ImageLimits
from chexops.serving.auth import Authenticator, RateLimiter, load_keys, parse_keys
from chexops.serving.faults import FaultSpec, parse_faults
from chexops.serving.providers import parse as parse_providers

if TYPE_CHECKING:
    from chexops.serving.admission import AdmissionLimits

DEV_KEYS = "dev:chexops-dev-key"
FEEDBACK_DB = "feedback/feedback.db"  # under $CHEXOPS_HOME, without CHEXOPS_FEEDBACK_URL
OFF = ("0", "false", "no", "off")
ENVIRONMENT = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
MAX_PIXELS = 4096 * 4096


class Settings(BaseSettings):
    """What the service reads from its environment; `Settings.from_env()` reads it."""

    model_config = SettingsConfigDict(env_prefix="CHEXOPS_", frozen=True)

    model_tag: str = Field(
        DEFAULT_SERVE_REF,
        validation_alias="CHEXOPS_MODEL",
        description=(
            "a registry reference (resolved by `chexops.export.bento.serving_tag`, needs MLflow) or an exact Bento tag "
            "`NAME:VERSION` (in a container; also what `bentoml build` packs)"
        ),
    )
    precision: Literal["fp32", "int8"] = Field("fp32", description="`int8` runs `model.int8.onnx` (static QDQ)")
    threads: int = Field(2, ge=1, description="ONNX Runtime intra-op threads (inter-op 1)")
    providers: str = Field(
        "cpu",
        description=(
            "ONNX Runtime execution providers in order, e.g. `cuda,cpu` (CUDA needs `onnxruntime-gpu` and a GPU; a "
            "missing "
            "one is skipped with a warning, an unknown name refused at start); `GET /model` shows those in use"
        ),
    )
    max_inflight: int = Field(
        2,
        ge=1,
        description=(
            "admission control (above): requests on `/predict` and `/explain` processed at once, about cores / "
            "`CHEXOPS_THREADS`"
        ),
    )
    max_queue: int = Field(
        16, ge=0, description=("more requests that may wait for a slot (0: refuse as soon as all slots are busy)")
    )
    queue_timeout_ms: int = Field(500, ge=1, description="the longest a request waits for a slot before its 503")
    batching: bool = Field(
        False,
        description=(
            '1: adaptive batching through the internal `/infer` API (off by default: see "Why the service is shaped '
            "this "
            'way"); `0`, `false`, `no` or `off` turn it off'
        ),
    )
    max_batch_size: int = Field(16, ge=1, description="adaptive batching: the largest batch")
    max_latency_ms: int = Field(
        2000,
        ge=1,
        description=(
            "adaptive batching: the latency budget (a request the batcher cannot take runs alone instead of failing)"
        ),
    )
    api_keys: SecretStr = Field(SecretStr(""), description="`clinic:key,clinic2:key2` (keys ≥ 8 characters)")
    api_keys_file: str = Field(
        "",
        description=(
            "a mounted file of the same pairs (one per line, `#` comments); its keys join those of `CHEXOPS_API_KEYS`"
        ),
    )
    rate_per_minute: float = Field(
        120.0, gt=0, validation_alias="CHEXOPS_RATE_LIMIT", description=("per-key token bucket: requests per minute")
    )
    rate_burst: int = Field(20, ge=1, description="per-key token bucket: burst")
    address_rate_per_minute: int = Field(
        0,
        ge=0,
        validation_alias="CHEXOPS_ADDRESS_RATE_LIMIT",
        description=(
            "authenticated requests per minute per client address, every clinic behind one address sharing it (0: off)"
        ),
    )
    address_burst: int = Field(
        80, ge=1, validation_alias="CHEXOPS_ADDRESS_RATE_BURST", description=("the burst of that per-address bucket")
    )
    auth_failures_per_minute: int = Field(
        10,
        ge=1,
        validation_alias="CHEXOPS_AUTH_FAILURE_LIMIT",
        description=(
            "failed authentications per minute per client address (also the burst); over it the address gets 429 for "
            "every key but those that already authenticated from it in the last 24 h"
        ),
    )
    max_upload_mb: float = Field(20.0, gt=0, description="bigger bodies → 413 before they are read")
    max_pixels: int = Field(
        MAX_PIXELS,
        ge=256,
        description=(
            "decompression-bomb limit (4096², 16.8 Mpx: a CheXpert full-size radiograph is about 2,500-3,000 px a "
            "side, the largest flat-panel detectors 43 cm at 0.1 mm, about 4,300 × 4,300; decoding one costs about "
            "20 bytes a pixel)"
        ),
    )
    upload_timeout_s: float = Field(
        30.0, gt=0, description="the longest a request body may take to arrive (408 and the connection closed)"
    )
    min_upload_kib_per_s: float = Field(
        16.0,
        ge=0,
        validation_alias="CHEXOPS_MIN_UPLOAD_RATE",
        description=(
            "after its first 2 s, a request body must arrive at least this fast on average (KiB/s; 408 and the "
            "connection closed otherwise; 0: no minimum). Bodies are read whole before a request takes an inference "
            "slot"
        ),
    )
    max_uploads_per_client: int = Field(
        8,
        ge=1,
        description=(
            "request bodies being received at once per API key presented, and 4 times as many per client address "
            "(429 beyond)"
        ),
    )
    max_header_kb: int = Field(
        32, ge=1, description="request line and headers together, KiB (431 and the connection closed beyond)"
    )
    trusted_proxies: str = Field(
        "",
        description=(
            "addresses or networks (comma-separated, e.g. the ingress `10.0.0.0/8`) whose `X-Forwarded-For` and "
            "`X-Forwarded-Proto` are believed; empty: none, the client address is the TCP peer's"
        ),
    )
    modalities: Annotated[frozenset[str], NoDecode] = Field(
        frozenset({"CR", "DX"}), description=("DICOM modalities accepted (comma-separated)")
    )
    feedback_url: str = Field(
        "",
        json_schema_extra={"shown": f"`sqlite:///$CHEXOPS_HOME/{FEEDBACK_DB}`"},
        description="or a `postgresql://` URL with user, password, host and database (psycopg2, pooled)",
    )
    image_store: str = Field(
        "",
        json_schema_extra={"shown": "a folder beside the SQLite store (`$CHEXOPS_HOME/feedback/images`)"},
        description="where kept images live: a folder, or `s3://BUCKET/PREFIX` (boto3, the standard AWS_* variables)",
    )
    stored_image_side: int = Field(
        1024,
        ge=0,
        validation_alias="CHEXOPS_FEEDBACK_IMAGE_SIDE",
        description=("longest side of the stored image (0: full size)"),
    )
    static_dir: Path = Field(paths.ROOT / "bentos" / "static", description="the web page's files")
    drift_window: int = Field(
        200, ge=1, description=("the last images `chexops_drift_score` is computed over (`chexops/imaging/drift.py`)")
    )
    drift_min_images: int = Field(
        30, ge=1, description=("images in the window before the score is computed (at most the window)")
    )
    environment: str = Field(
        "development",
        description=(
            "label `environment` on every `chexops_*` series (`staging`, `production`, ...: a short lower-case name)"
        ),
    )
    track: Literal["stable", "canary"] = Field(
        "stable",
        description=(
            "label `track` (`stable` or `canary`) on every `chexops_*` series, with `model_version` (set by the "
            "overlays)"
        ),
    )
    freight: str = Field(
        "",
        description=(
            "the pipeline run this pod serves (JSON: commit, training and Bento images, data and registry "
            "versions), shown by `/model`; set from the pod annotation `chexops.io/freight`"
        ),
    )
    fault_injection: str = Field(
        "",
        description=(
            "`error_rate=0.5,delay_ms=300`: fails and slows clinical requests on purpose, for the canary-analysis test "
            "only; refused when the environment is `production`, logged as `FAULT INJECTION IS ON`"
        ),
    )

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError("\n".join(_explain(error) for error in exc.errors())) from None

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of this process's environment."""
        return cls()

    @model_validator(mode="before")
    @classmethod
    def _blank_is_default(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {k: v.strip() if isinstance(v, str) else v for k, v in data.items()}
        return {k: v for k, v in data.items() if v != ""}

    @field_validator("precision", "environment", "track", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: str) -> str:
        if not ENVIRONMENT.fullmatch(value):
            raise ValueError(f"must be a short lower-case name (staging, production, ...), got {value!r}")
        return value

    @field_validator("batching", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        return value.lower() not in OFF if isinstance(value, str) else value

    @field_validator("modalities", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return frozenset(m.strip().upper() for m in value.split(",") if m.strip()) if isinstance(value, str) else value

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: str) -> str:
        parse_providers(value)  # ConfigError for an unknown name
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"must be IP addresses or networks (comma-separated), got {item!r}") from None
        return ",".join(v.strip() for v in value.split(",") if v.strip())

    @field_validator("api_keys")
    @classmethod
    def _key_pairs(cls, value: SecretStr) -> SecretStr:
        parse_keys(value.get_secret_value(), "CHEXOPS_API_KEYS")  # ConfigError for a malformed pair
        return value

    @model_validator(mode="after")
    def _faults_allowed(self) -> Settings:
        parse_faults(self.fault_injection, self.environment)  # ConfigError: malformed, or in production
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def faults(self) -> FaultSpec | None:
        """CHEXOPS_FAULT_INJECTION parsed (None: no faults)."""
        return parse_faults(self.fault_injection, self.environment)

    def execution_providers(self) -> list[str]:
        """ONNX Runtime's provider names in order, CPU last; `chexops.serving.providers.available` drops
        those this build lacks."""
        return parse_providers(self.providers)

    def authenticator(self) -> Authenticator:
        """This configuration's API keys with its rate limits (per key, per address, failures per address)."""
        keys = load_keys(self.api_keys.get_secret_value(), self.api_keys_file)
        per_address = None
        if self.address_rate_per_minute:  # 0: no limit per address
            per_address = RateLimiter(self.address_rate_per_minute, self.address_burst)
        return Authenticator(
            keys,
            RateLimiter(self.rate_per_minute, self.rate_burst),
            per_address,
            RateLimiter(self.auth_failures_per_minute, self.auth_failures_per_minute),
        )

    def admission_limits(self) -> AdmissionLimits:
        from chexops.serving.admission import AdmissionLimits  # Starlette: only where the app is built

        return AdmissionLimits(self.max_inflight, self.max_queue, self.queue_timeout_ms)

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_upload_bytes, max_pixels=self.max_pixels, modalities=self.modalities)

    def feedback_location(self) -> str:
        """The feedback store: CHEXOPS_FEEDBACK_URL, else SQLite at $CHEXOPS_HOME/feedback/feedback.db."""
        return self.feedback_url or f"sqlite:///{paths.home() / FEEDBACK_DB}"

    def images_for(self, url: str):
        """The image store of the feedback store at `url`: CHEXOPS_IMAGE_STORE, else the folder beside it."""
        from chexops.feedback.images import open_image_store
        from chexops.feedback.store import default_images

        return open_image_store(self.image_store, default_images(url))

    def open_feedback_store(self, url: str | None = None):
        """The feedback store (`url`, else `feedback_location()`) with its image store."""
        from chexops.feedback.store import FeedbackStore

        url = url or self.feedback_location()
        return FeedbackStore(url, images=self.images_for(url))


def variable(name: str) -> str:
    """The environment variable of the field `name`."""
    alias = Settings.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else Settings.model_config["env_prefix"] + name.upper()


def _explain(error: dict[str, Any]) -> str:
    """One validation error as `CHEXOPS_X must be ..., got ...`."""
    field = str(error["loc"][0]) if error["loc"] else ""
    name = next((n for n, info in Settings.model_fields.items() if field in (n, info.validation_alias)), None)
    got, ctx, kind = error.get("input"), error.get("ctx") or {}, error["type"]
    if kind in ("int_parsing", "int_from_float", "int_type"):
        problem = f"must be a whole number, got {got!r}"
    elif kind in ("float_parsing", "float_type", "finite_number"):
        problem = f"must be a number, got {got!r}"
    elif kind == "greater_than_equal":
        problem = f"must be at least {ctx['ge']:g}, got {got}"
    elif kind == "greater_than":
        problem = f"must be above {ctx['gt']:g}, got {got}"
    elif kind == "literal_error":
        problem = f"must be {ctx['expected']}, got {got!r}"
    elif kind == "value_error":
        problem = str(ctx["error"])
    else:
        problem = f"is not valid ({error['msg']}), got {got!r}"
    return f"{variable(name) if name else field or 'CHEXOPS_*'} {problem}."


def _shown(info: FieldInfo) -> str:
    """A field's default as the README shows it."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    value = info.default
    if "shown" in extra:
        return str(extra["shown"])
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, Path):
        return f"`{value.relative_to(paths.ROOT) if value.is_relative_to(paths.ROOT) else value}`"
    if isinstance(value, frozenset):
        return f"`{','.join(sorted(value))}`"
    return f"`{value}`" if value else "—"


def settings_table() -> str:
    """The Markdown table of every variable, its default and meaning (bentos/README.md holds it verbatim)."""
    rows = ["| variable | default | |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        rows.append(f"| `{variable(name)}` | {_shown(info)} | {info.description} |")
    return "\n".join(rows) + "\n"
