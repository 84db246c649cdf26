"""`chexops triton serve`: a real Triton Inference Server on a model repository, on this machine.

The server is the `tritonserver` binary that the `nvidia-pytriton` wheel ships (`pytriton/tritonserver/bin`,
its libraries in `nvidia_pytriton.libs`, with the Python backend only), run directly. PyTriton's own `Triton`
binding is not used: it serves Python functions bound in the calling process (it writes a repository of proxy
models of its own), not a model repository written beforehand, such as `chexops triton export --backend python`'s.

What running the binary needs, set up here in a temporary folder:

- `--backend-directory`: `python/` with the wheel's `libtriton_python.so` and `triton_python_backend_utils.py`
  and the `triton_python_backend_stub` built for the stub environment's Python version;
- the stub environment (`CHEXOPS_TRITON_PYTHON_ENV`, default: this venv's path + `-triton`, which `make venv`
  creates): a Python with numpy < 2. The stub's `c_python_backend_utils` passes tensors through numpy's C
  layout of 1.x: under numpy 2 it hands `execute` zeros and returns empty outputs (tried here). The stub
  finds that Python through PATH and its libpython through LD_LIBRARY_PATH;
- chexops itself for the stub (a folder holding a link to this package, nothing else, named in
  `CHEXOPS_PYTHONPATH`, which `model.py` puts on its path), so `model.py` imports the service's code.

The server dies with the process that started it (PR_SET_PDEATHSIG, `chexops.core.processes`), and counts as
ready once `/v2/health/ready` answers 200 and every model of the repository is ready.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.processes import ServerProcess

log = logging.getLogger(__name__)

PYTRITON = "nvidia-pytriton==0.7.0"
INSTALL = f"make venv (pip install --no-deps {PYTRITON}, and the stub's environment {{env}})"
ENV_VARIABLE = "CHEXOPS_TRITON_PYTHON_ENV"


@dataclass(frozen=True)
class StubEnv:
    """The Python environment of the Python backend's stub: its bin folder, version (3.11) and libpython's folder."""

    path: Path
    version: str
    libdir: str


def distribution() -> Path:
    """The wheel's `pytriton/tritonserver` folder (found, not imported: pytriton's own imports need numpy < 2)."""
    spec = importlib.util.find_spec("pytriton")
    folder = Path(next(iter(spec.submodule_search_locations))) / "tritonserver" if spec else None
    if folder is None or not (folder / "bin" / "tritonserver").is_file():
        raise UserInputError(f"tritonserver is not installed: {INSTALL.format(env=default_env())}.")
    return folder


def default_env() -> Path:
    return Path(os.environ.get(ENV_VARIABLE) or f"{sys.prefix}-triton")


def stub_env(path: Path | None = None) -> StubEnv:
    """The stub's environment, checked: a Python whose numpy is below 2 and which has ONNX Runtime and Pillow."""
    path = Path(path or default_env())
    python = path / "bin" / "python3"
    if not python.exists():
        raise UserInputError(f"no Python environment for Triton's stub at {path}: {INSTALL.format(env=path)}.")
    probe = (
        "import json, sys, sysconfig, numpy, onnxruntime, PIL; print(json.dumps({'version': '%d.%d' % "
        "sys.version_info[:2], 'libdir': sysconfig.get_config_var('LIBDIR'), 'numpy': numpy.__version__}))"
    )
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    if found.returncode != 0:
        last = (found.stderr.strip().splitlines() or ["?"])[-1]
        raise UserInputError(f"the stub's environment {path} cannot run the models ({last}).")
    info = json.loads(found.stdout)
    if int(info["numpy"].split(".")[0]) >= 2:
        raise UserInputError(
            f"the stub's environment {path} has numpy {info['numpy']}: Triton's Python backend stub needs numpy < 2."
        )
    return StubEnv(path, info["version"], info["libdir"] or "")


def models_in(repository: Path) -> list[str]:
    """The models of a repository: its folders with a config.pbtxt."""
    names = (
        sorted(d.name for d in repository.iterdir() if (d / "config.pbtxt").is_file()) if repository.is_dir() else []
    )
    if not names:
        raise UserInputError(f"{repository} holds no Triton model (no NAME/config.pbtxt): chexops triton export first.")
    return names


def prepare(workdir: Path, dist: Path, env: StubEnv) -> tuple[Path, Path]:
    """In `workdir`: the backend directory (the wheel's Python backend with the stub for `env`'s Python) and a
    PYTHONPATH folder holding only chexops. Links, not copies."""
    stub = dist / "python_backend_stubs" / env.version / "triton_python_backend_stub"
    if not stub.is_file():
        raise UserInputError(
            f"{PYTRITON} has no Python backend stub for Python {env.version} (the stub's environment)."
        )
    backends = workdir / "backends"
    (backends / "python").mkdir(parents=True)
    for item in (dist / "backends" / "python").iterdir():
        (backends / "python" / item.name).symlink_to(item)
    (backends / "python" / stub.name).symlink_to(stub)
    pythonpath = workdir / "pythonpath"
    pythonpath.mkdir()
    (pythonpath / "chexops").symlink_to(Path(__file__).resolve().parents[1])
    return backends, pythonpath


class TritonServer:
    """`tritonserver` on `repository` (HTTP, gRPC and metrics ports on `host`) in a session of its own that dies
        with this process; `start()` returns once the server and each model are ready (`ready_s` later). `preexec`: more
    to do in the child before exec (e.g. `os.sched_setaffinity`). A context manager."""

    def __init__(
        self,
        repository: Path,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        log_path: Path,
        host: str = "127.0.0.1",
        python_env: Path | None = None,
        timeout: float = 120,
        preexec: Callable[[], None] | None = None,
    ):
        self.repository, self.host = Path(repository).resolve(), host
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.models = models_in(self.repository)
        self.dist, self.env = distribution(), stub_env(python_env)
        self.log_path, self.timeout, self.preexec = Path(log_path), timeout, preexec
        self._workdir: tempfile.TemporaryDirectory | None = None
        self.server: ServerProcess | None = None
        self.ready_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def argv(self, backends: Path) -> list[str]:
        return [
            str(self.dist / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--exit-timeout-secs=5",
        ]

    def environment(self, pythonpath: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
        libs = self.dist.parent.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (self.env.libdir, str(libs), env.get("LD_LIBRARY_PATH")) if p)
        env["PATH"] = f"{self.env.path / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"  # the stub's python3
        env["CHEXOPS_PYTHONPATH"] = str(pythonpath)  # read by model.py: the embedded Python ignores PYTHONPATH
        return env

    def start(self) -> "TritonServer":
        self._workdir = tempfile.TemporaryDirectory(prefix="chexops-triton-")
        backends, pythonpath = prepare(Path(self._workdir.name), self.dist, self.env)
        self.server = ServerProcess(
            self.argv(backends),
            self.log_path,
            url=self.url,
            ready_path="/v2/health/ready",
            env=self.environment(pythonpath),
            timeout=self.timeout,
            name="tritonserver",
            preexec=self.preexec,
        )
        started = time.monotonic()
        try:
            self.server.start()
            self.check_models()
        except BaseException:
            self.stop()
            raise
        self.ready_s = round(time.monotonic() - started, 3)
        log.info(
            "Triton ready in %.1f s: %s at %s (gRPC %s:%d)",
            self.ready_s,
            ", ".join(self.models),
            self.url,
            self.host,
            self.grpc_port,
        )
        return self

    def check_models(self) -> None:
        """`ChexopsError` unless every model of the repository answers ready."""
        import httpx

        not_ready = [
            m for m in self.models if httpx.get(f"{self.url}/v2/models/{m}/ready", timeout=5).status_code != 200
        ]
        if not_ready:
            raise ChexopsError(f"tritonserver is up but not these models: {', '.join(not_ready)}\n{self.server.logs()}")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
