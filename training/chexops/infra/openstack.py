"""A small authenticated REST client for the OpenStack services chexops talks to (Blazar, Nova).

keystoneauth1 does the authentication (any auth type clouds.yaml names: application credentials,
password, OIDC) and finds endpoints in the service catalog; every failure becomes a
`ChexopsError` or `UserInputError` whose message tells the operator what to do.
"""

from __future__ import annotations

import logging
from typing import Any

from chexops.errors import ChexopsError, UserInputError
from chexops.infra.clouds import CloudConfig

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
    try:
        from keystoneauth1 import exceptions, loading, session
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ChexopsError(
            "The infra commands need keystoneauth1: install chexops with its 'infra' extra "
            "(pip install 'chexops[infra]')."
        ) from exc
    return exceptions, loading, session


def _credentials_message(cloud: CloudConfig, detail: str = "") -> str:
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


class OpenStackClient:
    """Authenticated JSON requests to one service of one cloud."""

    def __init__(self, cloud: CloudConfig, service_type: str, timeout: float = 30.0) -> None:
        exceptions, loading, session = _keystoneauth()
        self._exc = exceptions
        self.cloud = cloud
        self.service_type = service_type
        try:
            loader = loading.get_plugin_loader(cloud.auth_type)
        except exceptions.NoMatchingPlugin as exc:
            raise UserInputError(
                f"Cloud '{cloud.name}' uses auth_type '{cloud.auth_type}', which keystoneauth does not know."
            ) from exc
        accepted = {opt.dest for opt in loader.get_options()}
        options = {key.replace("-", "_"): value for key, value in cloud.auth.items()}
        options = {key: value for key, value in options.items() if key in accepted}
        try:
            auth = loader.load_from_options(**options)
        except exceptions.MissingRequiredOptions as exc:
            names = ", ".join(opt.dest for opt in exc.options)
            raise UserInputError(f"Cloud '{cloud.name}' in clouds.yaml lacks auth options: {names}.") from exc
        self.session = session.Session(auth=auth, verify=cloud.verify, timeout=timeout)
        self.endpoint_filter = {
            "service_type": service_type,
            "interface": cloud.interface,
            "region_name": cloud.region_name,
        }

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; returns the decoded JSON body (None for an empty body)."""
        exc = self._exc
        log.debug("%s %s %s", method, self.service_type, path)
        try:
            response = self.session.request(
                path,
                method,
                endpoint_filter=self.endpoint_filter,
                json=body,
                headers={"Accept": "application/json"},
                raise_exc=False,
            )
        except exc.Unauthorized as err:
            raise CredentialsRejected(_credentials_message(self.cloud, getattr(err, "message", "") or "")) from err
        except exc.EndpointNotFound as err:
            raise UserInputError(
                f"Cloud '{self.cloud.name}' has no '{self.service_type}' endpoint "
                f"(interface {self.cloud.interface}, region {self.cloud.region_name or 'any'}): "
                "check region_name in clouds.yaml; Blazar runs on every Chameleon site."
            ) from err
        except exc.ConnectFailure as err:
            raise ChexopsError(f"Cannot reach cloud '{self.cloud.name}' ({self.cloud.auth_url}): {err}") from err
        except exc.HttpError as err:  # an error from Keystone while authenticating
            raise ServiceError(f"Keystone of cloud '{self.cloud.name}' failed: {err}", getattr(err, "http_status", None)) from err
        except exc.ClientException as err:
            raise ChexopsError(f"Request to cloud '{self.cloud.name}' failed: {err}") from err

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
