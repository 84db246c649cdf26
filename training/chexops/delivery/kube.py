"""Reads from the Kubernetes API, as a pipeline step's ServiceAccount makes them (no client library).

In a pod: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` with the mounted token and CA.
Elsewhere, `--api URL` names an API server that needs no credentials (`kubectl proxy`), or a test's.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chexops.core.errors import ChexopsError, UserInputError

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(ChexopsError):
    """The API server refused or could not be reached (the message says which and why)."""


@dataclass
class Kube:
    """An API server: its URL, a bearer token and a CA file (both optional)."""

    api: str
    token: str | None = None
    ca_file: str | None = None

    @classmethod
    def connect(cls, api: str | None = None) -> Kube:
        if api:
            return cls(api.rstrip("/"))
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host or not (SA_DIR / "token").is_file():
            raise UserInputError(
                "not in a pod with a ServiceAccount token: give --api URL (for example `kubectl proxy`'s "
                "http://127.0.0.1:8001)."
            )
        return cls(
            f"https://{host}:{port}",
            token=(SA_DIR / "token").read_text().strip(),
            ca_file=str(SA_DIR / "ca.crt"),
        )

    def get(self, path: str) -> dict[str, Any] | None:
        """GET `path` as JSON; None for 404 (the object does not exist yet)."""
        request = urllib.request.Request(self.api + path, headers={"Accept": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        context = ssl.create_default_context(cafile=self.ca_file) if self.api.startswith("https") else None
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            detail = exc.read()[:300].decode(errors="replace")
            hint = " (the step's ServiceAccount may not read it: see workflows/rbac.yaml)" if exc.code == 403 else ""
            raise KubeError(f"GET {path}: HTTP {exc.code}{hint}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise KubeError(f"GET {self.api}{path}: {exc}") from None


def custom_object(group: str, version: str, namespace: str, plural: str, name: str) -> str:
    return f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}"
