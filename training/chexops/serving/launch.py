"""`chexops serve`: `bentoml serve bentos/service.py:Chexops` with the right environment.

BENTOML_HOME under $CHEXOPS_HOME, the model tag checked in the store before anything starts, and,
when no API key is configured, a development key that is announced loudly (never for production).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from .. import paths
from ..errors import ChexopsError, UserInputError
from . import providers
from .settings import DEFAULT_MODEL, DEV_KEYS

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
SERVICE = "bentos/service.py:Chexops"


def serve_env(model: str | None, precision: str | None, threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env["CHEXOPS_HOME"] = str(paths.home())
    env.setdefault("BENTOML_HOME", str(paths.home() / "bentoml"))
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
        log.warning("DEVELOPMENT API KEY: CHEXOPS_API_KEYS is not set, so clinic %r uses key %r "
                    "(send 'Authorization: Bearer %s'). Set CHEXOPS_API_KEYS or CHEXOPS_API_KEYS_FILE for real use.",
                    clinic, key, key)
    return env


def check_model(env: dict[str, str]) -> str:
    """The tag `bentoml serve` will load, resolved in a child process (BENTOML_HOME is read at import)."""
    tag = env.get("CHEXOPS_MODEL") or DEFAULT_MODEL
    code = "import bentoml, sys; print(bentoml.models.get(sys.argv[1]).tag)"
    result = subprocess.run([sys.executable, "-c", code, tag], capture_output=True, text=True, env=env, timeout=120)
    if result.returncode != 0:
        raise UserInputError(f"no Bento model {tag} in {env['BENTOML_HOME']}: run `make demo` or `chexops export` "
                             "(or `chexops bento import`) first, or pick one with --model NAME:VERSION.")
    return result.stdout.strip().splitlines()[-1]


def serve(port: int, host: str, model: str | None, precision: str | None, threads: int | None, development: bool = False) -> int:
    env = serve_env(model, precision, threads)
    providers.parse(env.get("CHEXOPS_PROVIDERS", ""))  # a typo is exit 2 here, not a traceback in the worker
    resolved = check_model(env)
    env["CHEXOPS_MODEL"] = resolved  # pin what was checked
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]
    if development:
        cmd.append("--development")
    log.info("Serving Bento model %s (%s) at http://%s:%d  (web page /, API /predict /explain /feedback, /metrics)",
             resolved, env.get("CHEXOPS_PRECISION", "fp32"), host, port)
    log.info("$ %s", " ".join(cmd[1:]))
    return subprocess.call(cmd, cwd=ROOT, env=env)


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 120) -> None:
    """Block until a started service answers /readyz; `ChexopsError` with its log's tail if it dies or stalls."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ChexopsError(f"bentoml serve exited with code {process.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise ChexopsError(f"bentoml serve was not ready after {timeout:.0f} s:\n{_tail(log_path)}")


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"
