"""The gateway's configuration: flags or `CHEXOPS_PACS_*` variables, validated into one typed object."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chexops.core.errors import ConfigError, UserInputError, validation_problems
from chexops.core.files import read_secret_file


def host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserInputError(f"{what} must be HOST:PORT, got {text!r}.")
    return host, int(port)


def remote_ae(text: str) -> tuple[str, str, int]:
    """`AET@HOST:PORT` → (AET, HOST, PORT)."""
    aet, sep, rest = text.partition("@")
    if not sep or not aet or len(aet) > 16:
        raise UserInputError(f"--send-to must be AET@HOST:PORT (AE title of at most 16 characters), got {text!r}.")
    return (aet, *host_port(rest, "--send-to's HOST:PORT"))


class PacsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHEXOPS_PACS_", extra="ignore")

    listen: str = "0.0.0.0:11112"
    ae_title: str = Field("CHEXOPS", min_length=1, max_length=16)
    send_to: str = ""
    service: str = "http://127.0.0.1:3000"
    api_key_env: str = "CHEXOPS_API_KEY"
    api_key_file: Path | None = None  # a mounted file holding the key (wins over the variable)
    state: Path = Field(default_factory=lambda: Path(os.environ.get("CHEXOPS_HOME", ".chexops")) / "pacs")
    metrics: str = ""  # HOST:PORT of the Prometheus /metrics endpoint ("" = none)
    orthanc_url: str = ""  # the PACS's REST API, to flag urgent studies ("" = no flag)
    orthanc_auth_env: str = "CHEXOPS_PACS_ORTHANC_AUTH"  # user:password, when Orthanc asks for it
    json_log: bool = False
    retry_initial_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(300.0, gt=0)
    timeout_s: float = Field(60.0, gt=0)

    @field_validator("ae_title")
    @classmethod
    def _aet(cls, value: str) -> str:
        if not value.isascii() or "\\" in value or value.strip() != value:
            raise ValueError("an AE title is ASCII, without backslashes or surrounding spaces")
        return value

    @classmethod
    def load(cls, **given) -> "PacsSettings":
        try:
            settings = cls(**{k: v for k, v in given.items() if v is not None and v is not False})  # unset flags: env
        except ValidationError as exc:
            raise ConfigError(f"the PACS gateway's settings are invalid: {validation_problems(exc)}") from None
        if not settings.send_to:
            raise UserInputError("--send-to AET@HOST:PORT (or CHEXOPS_PACS_SEND_TO) is required.")
        settings.listen_address, settings.destination  # noqa: B018 - checked here, with a clear message
        if settings.metrics:
            host_port(settings.metrics, "--metrics")
        return settings

    @property
    def listen_address(self) -> tuple[str, int]:
        return host_port(self.listen, "--listen")

    @property
    def destination(self) -> tuple[str, str, int]:
        return remote_ae(self.send_to)

    def api_key(self) -> str:
        if self.api_key_file is not None:
            return read_secret_file(self.api_key_file, "the clinic's API key file")
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise ConfigError(f"the clinic's API key is not set: export {self.api_key_env} (or name another variable).")
        return key
