"""Helpers for the evaluate / register tests: a synthetic dataset shared by the session, tiny training
configs, a training run in this process, a real `mlflow server` (SQLite or PostgreSQL backend) and a
throw-away PostgreSQL cluster started by the test itself."""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from chexops.core.processes import ServerProcess, free_port
from chexops.data.synth import synthesize
from support import environment

if TYPE_CHECKING:
    from chexops.train.loop import TrainSummary


def synth_dataset(tmp_path_factory) -> Path:
    """A synthetic CheXpert-layout dataset with a larger held-out set (slices need images), made
    once per test session whichever module asks first."""
    root = tmp_path_factory.getbasetemp() / "chexops-synth-eval"
    if not (root / "CheXpert-v1.0-small" / "valid.csv").exists():
        synthesize(root, patients=300, valid_patients=400, image_size=32, seed=0, progress=False, overwrite=True)
    return root


def write_config(path: Path, synth_root: Path, name: str = "tiny", train: dict | None = None, **sections) -> Path:
    """A tiny CPU training config on the synthetic data, all views (laterals included)."""
    config = {
        "name": name,
        "seed": 0,
        "data": {
            "csv": str(synth_root / "CheXpert-v1.0-small/train.csv"),
            "test_csv": str(synth_root / "CheXpert-v1.0-small/valid.csv"),
            "root": str(synth_root),
            "val_fraction": 0.25,
            "view": "all",
        },
        "preprocess": {"size": 24, "mean": [0.45], "std": [0.25]},
        "model": {"name": "small", "width": 8},
        "train": {
            "epochs": 4,
            "batch_size": 32,
            "optimizer": "adamw",
            "lr": 0.004,
            "schedule": "onecycle",
            "checkpoint_every": 1000,
            "device": "cpu",
            **(train or {}),
        },
        "tracking": {"experiment": "tests", "system_metrics": False},
    }
    for key, value in sections.items():
        config.setdefault(key, {}).update(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def train_run(config: Path, **env: str) -> TrainSummary:
    """Train in this process (no interpreter start-up) under `env`; returns the training summary."""
    from chexops.config import load_config
    from chexops.train.loop import train

    with environment(**env):
        return train(load_config(config), resume=False, checkpoint_dir=config.parent / f"ckpt-{config.stem}")


@contextlib.contextmanager
def mlflow_server(base: Path, backend_uri: str, artifacts: str | None = None):
    """A real `mlflow server` process with served artifacts (in `base`, or at `artifacts`: s3://...); yields its URI."""
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    argv = [
        Path(sys.executable).parent / "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts or base / "artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--workers",
        "1",
    ]
    with ServerProcess(argv, base / "server.log", url=uri, ready_path="/health", name=f"mlflow server ({backend_uri})"):
        yield uri


PG_USER = "chexops-pg"


def _postgres_account() -> str | None:
    """The account PostgreSQL runs as: ourselves when not root; as root (CI), the system `postgres`
    user or a `chexops-pg` user created here. None when no account can be had."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", PG_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    useradd = shutil.which("useradd")
    if useradd is None:
        pytest.skip("PostgreSQL refuses to run as root, and there is no `postgres` user and no useradd to create one")
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
        check=True,
        capture_output=True,
    )
    return PG_USER


def _pg_binary(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, else where Debian's `postgresql` package puts it."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return str(candidates[-1]) if candidates else None


@contextlib.contextmanager
def postgres_cluster():
    """A throw-away PostgreSQL cluster; yields a SQLAlchemy URL for its `postgres` database."""
    with postgres_server() as server:
        yield server.url


class PostgresServer:
    """A running throw-away cluster: `url`, and `stop()` / `start()` to take it down and back up on the same port."""

    def __init__(self, run, pg_ctl: str, data: Path, options: str, log: Path, url: str):
        self._run, self._pg_ctl, self._data, self._options, self._log, self.url = run, pg_ctl, data, options, log, url
        self.running = False

    def start(self) -> None:
        done = self._run(
            [self._pg_ctl, "-D", str(self._data), "-o", self._options, "-l", str(self._log), "-w", "-t", "60", "start"]
        )
        if done.returncode != 0:
            pytest.fail(
                f"pg_ctl start failed: {done.stderr[-1500:]} "
                f"{self._log.read_text()[-1500:] if self._log.exists() else ''}"
            )
        self.running = True

    def stop(self) -> None:
        self._run([self._pg_ctl, "-D", str(self._data), "-m", "fast", "-w", "stop"])
        self.running = False

    def sql(self, statement: str) -> None:
        """One statement on the `postgres` database, outside a transaction (CREATE / DROP DATABASE)."""
        import psycopg2

        conn = psycopg2.connect(self.url.replace("postgresql+psycopg2://", "postgresql://"))
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(statement)
        conn.close()


@contextlib.contextmanager
def postgres_server():
    """A throw-away PostgreSQL cluster (initdb + pg_ctl) on a free local port, as a `PostgresServer`.
    Skips, naming what is missing, when the server binaries or the driver are absent (bash
    tests/install-tools.sh installs Debian's `postgresql`, so CI has them)."""
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) are missing: bash tests/install-tools.sh installs them"
        )
    pytest.importorskip("psycopg2", reason="psycopg2-binary (MLflow's PostgreSQL driver) is not installed")
    account = _postgres_account()
    runuser, su = shutil.which("runuser"), shutil.which("su")
    if account is not None and not runuser and not su:
        pytest.skip("running as root without runuser or su to start PostgreSQL as another user")

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        if account is not None:
            cmd = (
                [runuser, "-u", account, "--", *cmd]
                if runuser
                else [su, "-s", "/bin/sh", account, "-c", shlex.join(cmd)]
            )
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    base = Path(tempfile.mkdtemp(prefix="chexops-pg-"))  # under /tmp: reachable by the PostgreSQL account
    data, sock, log = base / "data", base / "sock", base / "postgres.log"
    sock.mkdir()
    if account is not None:
        info = pwd.getpwnam(account)
        for path in (base, sock):
            os.chown(path, info.pw_uid, info.pw_gid)
    port = free_port()
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    # SQLAlchemy 2.1 would pick psycopg 3 for plain postgresql://
    server = PostgresServer(
        run, pg_ctl, data, options, log, f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    )
    try:
        done = run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions"])
        if done.returncode != 0:
            pytest.fail(f"initdb failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")
        server.start()
        yield server
    finally:
        if server.running:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
