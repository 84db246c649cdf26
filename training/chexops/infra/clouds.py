"""Connections to the clouds named in clouds.yaml, through openstacksdk.

Nothing secret is ever passed on the command line or stored by chexops: a cloud is named
(`--cloud` or `$OS_CLOUD`) and `openstack.connect(cloud=...)` finds it in the standard places
(clouds.yaml merged with secure.yaml, as the OpenStack CLI and Terraform's provider do). The
connection's keystoneauth session authenticates every request, including Blazar's, which
openstacksdk has no proxy for.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chexops.core.errors import ChexopsError, UserInputError

log = logging.getLogger(__name__)

_CREDENTIALS_HINT = "Download one from the Chameleon site's Horizon: Identity > Application Credentials."


def _openstack() -> Any:
    try:
        import openstack
        import openstack.config
        import openstack.exceptions
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ChexopsError(
            "The infra commands need openstacksdk: install chexops with its 'infra' extra from the checkout "
            "(pip install -e '.[infra]')."
        ) from exc
    return openstack


@dataclass(frozen=True)
class Cloud:
    """One cloud of clouds.yaml, connected: the openstacksdk Connection and what messages name."""

    name: str
    connection: Any
    source: Path | None

    @property
    def auth_url(self) -> str:
        return str((self.connection.config.config.get("auth") or {}).get("auth_url", ""))

    @property
    def region_name(self) -> str | None:
        return self.connection.config.get_region_name()

    @property
    def interface(self) -> str:
        return self.connection.config.get_interface() or "public"


def connect(name: str | None) -> Cloud:
    """`openstack.connect(cloud=NAME)` for the named cloud (or `$OS_CLOUD`), with errors that say
    what to fix. Nothing is sent until the first request (authentication is lazy)."""
    openstack = _openstack()
    cloud_name = name or os.environ.get("OS_CLOUD")
    if not cloud_name:
        raise UserInputError(
            "No cloud named: pass --cloud NAME or set OS_CLOUD to an entry of clouds.yaml "
            "(download it from the Chameleon site's Horizon: Identity > Application Credentials)."
        )
    explicit = os.environ.get("OS_CLIENT_CONFIG_FILE")
    if explicit and not Path(explicit).expanduser().is_file():
        raise UserInputError(f"OS_CLIENT_CONFIG_FILE points at {explicit}, which is not a file.")
    try:
        config = openstack.config.OpenStackConfig()
    except openstack.exceptions.ConfigException as exc:
        raise UserInputError(f"clouds.yaml cannot be read: {exc}") from exc
    source = Path(config.config_filename) if config.config_filename else None
    if source is None:
        searched = ", ".join(dict.fromkeys(str(Path(p).parent) for p in config._config_files))  # noqa: SLF001 - the search list
        raise UserInputError(
            f"No clouds.yaml found (searched {searched}; or set OS_CLIENT_CONFIG_FILE). {_CREDENTIALS_HINT}"
        )
    known = sorted(config.get_cloud_names())
    if cloud_name not in known:
        raise UserInputError(f"Cloud '{cloud_name}' is not in {source} (clouds there: {', '.join(known) or 'none'}).")
    try:
        connection = openstack.connect(cloud=cloud_name)
    except openstack.exceptions.ConfigException as exc:
        raise UserInputError(f"Cloud '{cloud_name}' in {source} is not usable: {exc}") from exc
    log.debug("Using cloud %s from %s", cloud_name, source)
    return Cloud(name=cloud_name, connection=connection, source=source)
