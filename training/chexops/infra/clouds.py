"""Credentials from clouds.yaml, the file the OpenStack CLI and Terraform's provider read.

Nothing secret is ever passed on the command line or stored by chexops: a cloud is named
(`--cloud` or `$OS_CLOUD`) and looked up in the standard places, with secure.yaml merged in.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chexops.errors import UserInputError

log = logging.getLogger(__name__)

#: Searched in this order, like openstacksdk: the first file that exists wins.
_CONFIG_NAMES = ("clouds.yaml", "clouds.yml")
_SECURE_NAMES = ("secure.yaml", "secure.yml")


def _search_dirs() -> list[Path]:
    home = Path(os.path.expanduser("~"))
    xdg = Path(os.environ.get("XDG_CONFIG_HOME", home / ".config"))
    return [Path.cwd(), xdg / "openstack", Path("/etc/openstack")]


def _first_existing(names: tuple[str, ...], env_var: str) -> Path | None:
    explicit = os.environ.get(env_var)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserInputError(f"{env_var} points at {path}, which is not a file.")
        return path
    for directory in _search_dirs():
        for name in names:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserInputError(f"Cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UserInputError(f"{path} is not a YAML mapping.")
    return data


@dataclass(frozen=True)
class CloudConfig:
    """One clouds.yaml entry: what keystoneauth needs to authenticate, and where."""

    name: str
    auth_type: str
    auth: dict[str, Any] = field(repr=False)
    region_name: str | None = None
    interface: str = "public"
    verify: bool | str = True
    source: Path | None = None

    @property
    def auth_url(self) -> str:
        return str(self.auth.get("auth_url", ""))


def load_cloud(name: str | None) -> CloudConfig:
    """The named cloud (or `$OS_CLOUD`) from clouds.yaml merged with secure.yaml."""
    cloud_name = name or os.environ.get("OS_CLOUD")
    if not cloud_name:
        raise UserInputError(
            "No cloud named: pass --cloud NAME or set OS_CLOUD to an entry of clouds.yaml "
            "(download it from the Chameleon site's Horizon: Identity > Application Credentials)."
        )
    path = _first_existing(_CONFIG_NAMES, "OS_CLIENT_CONFIG_FILE")
    if path is None:
        searched = ", ".join(str(d) for d in _search_dirs())
        raise UserInputError(
            f"No clouds.yaml found (searched {searched}; or set OS_CLIENT_CONFIG_FILE). "
            "Download one from the Chameleon site's Horizon: Identity > Application Credentials."
        )
    config = _read_yaml(path)
    secure_path = _first_existing(_SECURE_NAMES, "OS_CLIENT_SECURE_FILE")
    if secure_path is not None:
        config = _merge(config, _read_yaml(secure_path))
    clouds = config.get("clouds") or {}
    if cloud_name not in clouds:
        known = ", ".join(sorted(clouds)) or "none"
        raise UserInputError(f"Cloud '{cloud_name}' is not in {path} (clouds there: {known}).")
    entry = clouds[cloud_name] or {}
    auth = dict(entry.get("auth") or {})
    if not auth.get("auth_url"):
        raise UserInputError(f"Cloud '{cloud_name}' in {path} has no auth.auth_url.")
    auth_type = entry.get("auth_type")
    if not auth_type:
        auth_type = "v3applicationcredential" if "application_credential_id" in auth or "application_credential_secret" in auth else "password"
    verify: bool | str = entry.get("verify", True)
    if entry.get("cacert"):
        verify = str(entry["cacert"])
    log.debug("Using cloud %s from %s (auth type %s)", cloud_name, path, auth_type)
    return CloudConfig(
        name=cloud_name,
        auth_type=str(auth_type),
        auth=auth,
        region_name=entry.get("region_name"),
        interface=str(entry.get("interface", "public")),
        verify=verify,
        source=path,
    )
