"""`chexops serve`: `bentoml serve bentos/service.py:Chexops` with the right environment.

BENTOML_HOME under $CHEXOPS_HOME; the model reference (default `models:/chexops-cxr@candidate`)
resolved to the exact Bento model before anything starts (by the resolver the caller passes:
`chexops.export.bento.serving_tag`, so that this layer never imports the registry), which the
service then loads by tag; and, when no API key is
configured, a development key that is announced loudly (never for production).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from typing import Callable, Protocol

from chexops.core import paths
from chexops.core.errors import UserInputError
from chexops.core.processes import die_with_parent
from chexops.serving.auth import require_keys_off_loopback
from chexops.serving.settings import DEV_KEYS, Settings

log = logging.getLogger(__name__)

SERVICE = "bentos/service.py:Chexops"


def serve_env(model: str | None, precision: str | None, threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env["CHEXOPS_HOME"] = str(paths.home())
    env["BENTOML_HOME"] = str(paths.bentoml_home())
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    if model:
        env["CHEXOPS_MODEL"] = model
    if precision:
        env["CHEXOPS_PRECISION"] = precision
    if threads:
        env["CHEXOPS_THREADS"] = str(threads)
    if not env.get("CHEXOPS_API_KEYS") and not env.get("CHEXOPS_API_KEYS_FILE"):
        env["CHEXOPS_API_KEYS"] = DEV_KEYS
        clinic, key = DEV_KEYS.split(":")
        log.warning(
            "DEVELOPMENT API KEY: CHEXOPS_API_KEYS is not set, so clinic %r uses key %r "
            "(send 'Authorization: Bearer %s'). Set CHEXOPS_API_KEYS or CHEXOPS_API_KEYS_FILE for real use.",
            clinic,
            key,
            key,
        )
    return env


class Served(Protocol):
    """What `resolve` returns (`chexops.export.bento.ServingTag`): the exact Bento tag, the reference it was
    resolved from, and whether the gate approved it."""

    tag: str
    reference: str
    evaluated: bool


def check_port_free(host: str, port: int) -> None:
    """`UserInputError` (exit 2, one line) when `host:port` cannot be listened on: BentoML would load the
    model first, then fail with a long traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserInputError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc} (another server is there? choose --port)."
            ) from None


def serve(
    port: int,
    host: str,
    model: str | None,
    precision: str | None,
    threads: int | None,
    resolve: Callable[[str], Served],
    development: bool = False,
) -> int:
    """Run `bentoml serve` until it ends; it dies with this process (PR_SET_PDEATHSIG), its worker with it
    (chexops.core.processes). `resolve` turns `CHEXOPS_MODEL` (a registry reference by default) into the
    exact, checked Bento model (exit 2 otherwise). Off loopback, configured API keys are required (exit 2 otherwise)."""
    settings = Settings.from_env()  # a bad CHEXOPS_* value is exit 2 here, not a traceback in the worker
    check_port_free(host, port)
    require_keys_off_loopback(host, settings.api_keys.get_secret_value(), settings.api_keys_file)
    env = serve_env(model, precision, threads)
    served = resolve(model or settings.model_tag)
    resolved = served.tag
    env["CHEXOPS_MODEL"] = resolved  # pin what was checked: the service loads exactly this tag
    env["CHEXOPS_MODEL_REF"] = served.reference
    if not served.evaluated:
        log.warning("Bento model %s was exported --unevaluated: not approved by the gate (the page says so).", resolved)
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]
    if development:
        cmd.append("--development")
    log.info(
        "Serving %s = Bento model %s (%s) at http://%s:%d  (web page /, API /predict /explain /feedback, /metrics)",
        served.reference,
        resolved,
        precision or settings.precision,
        host,
        port,
    )
    log.info("$ %s", " ".join(cmd[1:]))
    return subprocess.call(cmd, cwd=paths.ROOT, env=env, preexec_fn=die_with_parent)
