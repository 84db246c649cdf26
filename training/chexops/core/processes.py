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
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time


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
