"""Requests to OpenStack services through an openstacksdk connection, with clear errors.

Blazar (which openstacksdk has no proxy for) is reached through the connection's own keystoneauth
session, found in the service catalog as `reservation`; compute, image and network look-ups use
the SDK's proxies inside `translated(...)`. Every failure becomes a `ChexopsError` or
`UserInputError` whose message tells the operator what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from chexops.core.errors import ChexopsError, UserInputError
from chexops.infra.clouds import Cloud

log = logging.getLogger(__name__)


class CredentialsRejected(UserInputError):
    """Keystone (or a service) answered 401: the credentials are wrong, expired or revoked."""


class NotFound(UserInputError):
    """The service answered 404 for the object the user named."""


class ServiceError(ChexopsError):
    """The service refused the request (4xx other than 401/404, or 5xx)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _keystoneauth() -> Any:
    from keystoneauth1 import exceptions

    return exceptions


def _credentials_message(cloud: Cloud, detail: str = "") -> str:
    where = f"Keystone at {cloud.auth_url}" if cloud.auth_url else "Keystone"
    return (
        f"{where} rejected the credentials of cloud '{cloud.name}' (HTTP 401{': ' + detail if detail else ''}): "
        "they are wrong, expired or revoked. Create a new application credential in the site's "
        "Horizon (Identity > Application Credentials), put it in clouds.yaml"
        f"{' (' + str(cloud.source) + ')' if cloud.source else ''}, and run the command again."
    )


def _error_detail(response: Any) -> str:
    """The message of an OpenStack error body: Blazar's error_message, Keystone/Nova's error.message."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or "").strip()[:300]
    if isinstance(body, dict):
        if "error_message" in body:
            return str(body["error_message"])
        for value in body.values():
            if isinstance(value, dict) and "message" in value:
                return str(value["message"])
    return str(body)[:300]


@contextmanager
def translated(cloud: Cloud, what: str) -> Iterator[None]:
    """Turn keystoneauth/openstacksdk exceptions raised while doing WHAT into chexops errors."""
    from openstack import exceptions as sdk

    exc = _keystoneauth()
    try:
        yield
    except (exc.Unauthorized, sdk.HttpException) as err:
        status = getattr(err, "status_code", None) or getattr(err, "http_status", None)
        if isinstance(err, exc.Unauthorized) or status == 401:
            raise CredentialsRejected(_credentials_message(cloud, getattr(err, "message", "") or "")) from err
        if isinstance(err, exc.HttpError):
            raise ServiceError(f"Keystone of cloud '{cloud.name}' failed: {err}", status) from err
        raise ServiceError(
            f"Cloud '{cloud.name}' refused {what} (HTTP {status}): {getattr(err, 'details', None) or err}", status
        ) from err
    except exc.EndpointNotFound as err:
        raise UserInputError(
            f"Cloud '{cloud.name}' has no endpoint for {what} (interface {cloud.interface}, region "
            f"{cloud.region_name or 'any'}): check region_name in clouds.yaml."
        ) from err
    except exc.ConnectFailure as err:
        raise ChexopsError(f"Cannot reach cloud '{cloud.name}' ({cloud.auth_url}): {err}") from err
    except exc.ClientException as err:
        raise ChexopsError(f"Request to cloud '{cloud.name}' for {what} failed: {err}") from err


class OpenStackClient:
    """Authenticated JSON requests to one service of one cloud, over the connection's session."""

    def __init__(self, cloud: Cloud, service_type: str) -> None:
        self.cloud = cloud
        self.service_type = service_type
        self.session = cloud.connection.session
        self.endpoint_filter = {
            "service_type": service_type,
            "interface": cloud.interface,
            "region_name": cloud.region_name,
        }

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; returns the decoded JSON body (None for an empty body)."""
        log.debug("%s %s %s", method, self.service_type, path)
        with translated(self.cloud, f"the '{self.service_type}' service ({method} {path})"):
            response = self.session.request(
                path,
                method,
                endpoint_filter=self.endpoint_filter,
                json=body,
                headers={"Accept": "application/json"},
                raise_exc=False,
            )
        status = response.status_code
        if status == 401:
            raise CredentialsRejected(_credentials_message(self.cloud, _error_detail(response)))
        if status == 404:
            raise NotFound(_error_detail(response))
        if status >= 400:
            raise ServiceError(
                f"{self.service_type} service of cloud '{self.cloud.name}' refused {method} {path} "
                f"(HTTP {status}): {_error_detail(response)}",
                status,
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as err:
            raise ChexopsError(f"{self.service_type} answered {method} {path} with non-JSON content.") from err


# ---------------------------------------------------------------------------------------------
# Who is asking: the Keystone token behind the connection
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """The caller as Keystone sees it: the user Blazar records as a lease's creator, and the application
    credential (if any) the token came from."""

    user_id: str
    credential_name: str | None
    restricted: bool


class RestrictedCredential(UserInputError):
    """The application credential is restricted, so Blazar cannot create a lease with it."""


def identity(cloud: Cloud) -> Identity:
    """Authenticate (once per connection) and read the token's user and application credential."""
    session = cloud.connection.session
    with translated(cloud, "authentication"):
        access = session.auth.get_access(session)
    try:
        credential = dict(access.application_credential or {})
    except (AttributeError, KeyError):  # a v2 token, or a token not from an application credential
        credential = {}
    return Identity(
        user_id=str(access.user_id),
        credential_name=credential.get("name") or credential.get("id"),
        restricted=bool(credential.get("restricted", False)),
    )


def restricted_message(cloud: Cloud, who: Identity) -> str:
    return (
        f"The application credential '{who.credential_name}' of cloud '{cloud.name}' is restricted: Blazar cannot "
        "create a lease with it (it answers HTTP 500). Create a new application credential in the site's Horizon "
        "(Identity > Application Credentials > Create) with *Unrestricted* ticked, put it in clouds.yaml"
        f"{' (' + str(cloud.source) + ')' if cloud.source else ''}, and run the command again."
    )


def require_unrestricted(cloud: Cloud) -> Identity:
    """The caller, or RestrictedCredential (exit 2) before Blazar is asked for anything."""
    who = identity(cloud)
    if who.restricted:
        raise RestrictedCredential(restricted_message(cloud, who))
    return who
