"""`chexops serve`: what `bentoml serve bentos/service.py:Chexops` does, in this process, with the right environment.

BENTOML_HOME under $CHEXOPS_HOME; the model reference (default `models:/chexops-cxr@candidate`)
resolved to the exact Bento model before anything starts (by the resolver the caller passes:
`chexops.export.bento.serving_tag`, so that this layer never imports the registry), which the
service then loads by tag; and, when no API key is
configured, a development key that is announced loudly (never for production).

This process is BentoML's arbiter (`_bentoml_impl.server.serve_http`, as `bentoml serve` calls it) and starts
the one worker: no second interpreter that imports BentoML and the service again before the worker (about a
second of the time to ready, docs/benchmarks.md "Start-up").
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Callable, Protocol

from chexops.core import paths
from chexops.core.errors import ChexopsError, UserInputError
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
) -> None:
    """Serve until interrupted (SIGINT/SIGTERM stop the worker first); the worker stops too when this process
    is killed (`chexops.core.processes.watch_parent`). `resolve` turns `CHEXOPS_MODEL` (a registry reference by
    default) into the exact, checked Bento model (exit 2 otherwise). Off loopback, configured API keys are
    required (exit 2 otherwise)."""
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
    log.info(
        "Serving %s = Bento model %s (%s) at http://%s:%d  (web page /, API /predict /explain /feedback, /metrics)",
        served.reference,
        resolved,
        precision or settings.precision,
        host,
        port,
    )
    log.info(
        "$ bentoml serve %s --host %s --port %d%s (in this process)",
        SERVICE,
        host,
        port,
        " --development" if development else "",
    )
    os.environ.update(env)  # the service module (below) and its worker read them
    serve_bentoml(host, port, development)


def serve_bentoml(host: str, port: int, development: bool) -> None:
    """`bentoml serve SERVICE --host HOST --port PORT [--development]` (bentoml_cli.serve, BentoML 1.4) in this
    process: the service loaded from the checkout, then its arbiter until it stops."""
    from _bentoml_impl.server import serve_http
    from bentoml._internal.log import configure_server_logging
    from bentoml._internal.service.loader import load
    from bentoml.exceptions import BentoMLException

    configure_server_logging()
    root = str(paths.ROOT)
    os.chdir(root)
    if sys.path[0] != root:
        sys.path.insert(0, root)
    timeout = os.environ.get("BENTOML_TIMEOUT")  # `bentoml serve --timeout`'s variable
    try:
        svc = load(bento_identifier=SERVICE, working_dir=root)
        svc.inject_config()
        serve_http(svc, host=host, port=port, timeout=int(timeout) if timeout else None, development_mode=development)
    except BentoMLException as exc:
        raise ChexopsError(f"bentoml serve failed: {exc}") from None
