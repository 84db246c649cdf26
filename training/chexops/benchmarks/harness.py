"""The servers a benchmark starts: `bentoml serve` of the service (or another `python -m` server) on a free
loopback port in a `ServerProcess`, on chosen CPUs; and this process pinned to CPUs for a while."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from chexops.core import paths
from chexops.core.processes import ServerProcess, free_port

SERVICE = "bentos/service.py:Chexops"


def server(
    env: dict[str, str],
    log_path: Path,
    timeout: float = 180,
    module: list[str] | None = None,
    cpus: set[int] | None = None,
) -> ServerProcess:
    """`bentoml serve` of the service, not yet started (`with server(...) as svc:` starts it and waits until
    /readyz answers); `module`: another server (`python -m ...` arguments, given --host and --port) instead;
    `cpus`: the CPUs it (and every process it starts) runs on. The log is appended to."""
    if not module and not (paths.ROOT / "bentos" / "service.py").exists():
        raise SystemExit(f"{paths.ROOT / 'bentos' / 'service.py'} is missing: --start needs the repository checkout")
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        *(module or ["bentoml", "serve", SERVICE]),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return ServerProcess(
        argv,
        log_path,
        url=f"http://127.0.0.1:{port}",
        env=env,
        cwd=paths.ROOT,
        timeout=timeout,
        name=" ".join(module[:1]) if module else "bentoml serve",
        append=True,
        preexec=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )


def service_env(args, key: str, tmp: Path, batching: bool) -> dict[str, str]:
    """The environment of a started service: this one's without CHEXOPS_* settings, then --service-env, then the
    benchmark's own (model, precision, threads, batching, its API key, limits out of the way, a feedback store
    in `tmp`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHEXOPS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(dict(item.split("=", 1) for item in args.service_env))
    env.update(
        {
            "CHEXOPS_HOME": str(paths.home()),
            "BENTOML_HOME": str(paths.bentoml_home()),
            "BENTOML_DO_NOT_TRACK": "True",
            "CHEXOPS_MODEL": args.model,
            "CHEXOPS_PRECISION": args.precision,
            "CHEXOPS_THREADS": str(args.threads),
            "CHEXOPS_BATCHING": "1" if batching else "0",
            "CHEXOPS_API_KEYS": f"bench:{key}",
            "CHEXOPS_RATE_LIMIT": "1000000000",
            "CHEXOPS_RATE_BURST": "1000000",
            # latency runs measure the service, not its admission gate (--flood keeps the service's defaults)
            "CHEXOPS_MAX_QUEUE": "100000",
            "CHEXOPS_QUEUE_TIMEOUT_MS": "600000",
            "CHEXOPS_FEEDBACK_URL": f"sqlite:///{tmp / 'feedback.db'}",
        }
    )
    for name in ("CHEXOPS_SHARED_DATA",):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


class Pinned:
    """`with Pinned(cpus):` this process runs on `cpus` (all threads started inside inherit them), then as before."""

    def __init__(self, cpus: set[int] | None):
        self.cpus, self.before = cpus, None

    def __enter__(self) -> None:
        if self.cpus:
            self.before = os.sched_getaffinity(0)
            os.sched_setaffinity(0, self.cpus)

    def __exit__(self, *exc) -> None:
        if self.before:
            os.sched_setaffinity(0, self.before)
