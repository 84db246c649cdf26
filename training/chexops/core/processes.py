"""Processes: nothing serves after the command that started it is gone, and a server stops with all it started.

`bentoml serve` runs its workers through a circus arbiter that starts each worker in a session of
its own (`os.setsid` in circus' preexec), holding the listening socket. Kill the arbiter with
SIGKILL (or its whole process group) and the worker is re-parented, never told, and keeps answering
on the port. Two guards:

- `die_with_parent` (a `preexec_fn`): the child gets SIGTERM when the process that started it dies,
  however it dies (Linux PR_SET_PDEATHSIG). `chexops serve` starts `bentoml serve` with it.
- `watch_parent` (called in the worker): a daemon thread that notices the worker's parent is gone
  (it was re-parented) and stops the worker: SIGTERM to itself (uvicorn's graceful shutdown), then,
  if it is still alive a few seconds later, `os._exit`. The port is free again at once.

`stop_tree` stops a server and every descendant, including workers that left its process group.
`ServerProcess` starts a server with both guards, waits until it answers, and stops it with `stop_tree`;
`free_port` finds it a port.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from chexops.core.errors import ChexopsError


def stop_tree(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Send `sig` to the process and every descendant, wait, then SIGKILL whatever is left."""
    import psutil  # not in the serving image, which never stops trees

    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        try:
            member.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    if process.poll() is None:
        process.wait(10)


log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child before exec: receive `sig` when the parent dies (Linux; a no-op elsewhere). The kernel sends
    it when the *thread* that started the child ends: start long-lived children from the main thread."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl: no signal will come
        os.kill(os.getpid(), sig)


def watch_parent(interval: float = 0.5, grace: float = 5.0) -> threading.Thread:
    """Start the watchdog for this process's current parent; returns its (daemon) thread."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        log.warning("the process that started this worker (pid %d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(1)

    thread = threading.Thread(target=watch, name="chexops-parent-watch", daemon=True)
    thread.start()
    return thread


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server command in a session of its own that dies with this process (`die_with_parent`), its output
    in `log_path`; ready once `url` + `ready_path` answers 200; stopped with all it started (`stop_tree`).

        with ServerProcess([...], log_path, url=f"http://127.0.0.1:{port}", name="bentoml serve") as server:
            httpx.get(f"{server.url}/model")

    Without `url` it is ready once started. `preexec`: more to do in the child before exec (e.g.
    `os.sched_setaffinity`); `append`: keep the log's earlier content (a restart on the same log)."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        url: str | None = None,
        ready_path: str = "/readyz",
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        timeout: float = 120,
        name: str | None = None,
        preexec: Callable[[], None] | None = None,
        append: bool = False,
    ):
        self.argv, self.log_path, self.url, self.ready_path = [str(a) for a in argv], Path(log_path), url, ready_path
        self.env, self.cwd, self.timeout, self.preexec, self.append = env, cwd, timeout, preexec, append
        self.name = name or Path(self.argv[0]).name
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self._started().pid

    def start(self) -> "ServerProcess":
        """Start the command and wait until it is ready; `ChexopsError` (the server stopped) if it dies or stalls."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab" if self.append else "wb") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=None if self.env is None else dict(self.env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._child_setup,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop(signal.SIGKILL, timeout=10)
            raise
        return self

    def _child_setup(self) -> None:
        die_with_parent()
        if self.preexec is not None:
            self.preexec()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until `url` + `ready_path` answers 200 (at once without `url`); `ChexopsError` with the log's tail
        if the server exits or is not ready within `timeout` seconds (default: the one given at construction)."""
        if self.url is None:
            return
        import httpx  # here: importing this module stays light

        process, timeout = self._started(), self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ChexopsError(f"{self.name} exited with code {process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise ChexopsError(f"{self.name} was not ready after {timeout:.0f} s:\n{self.logs()}")

    def logs(self, chars: int = 4000) -> str:
        """The last `chars` characters of the server's log."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "(no log)"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """`sig` to the server and every descendant; SIGKILL to whatever is left after `timeout` seconds."""
        if self.process is not None:
            stop_tree(self.process, sig, timeout)

    def _started(self) -> subprocess.Popen:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process

    def __enter__(self) -> "ServerProcess":
        return self if self.process is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
