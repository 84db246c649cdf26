"""Stopping a server and all it started, including workers that left its process group
(BentoML starts its workers in sessions of their own)."""

from __future__ import annotations

import signal
import subprocess

import psutil


def stop_tree(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Send `sig` to the process and every descendant, wait, then SIGKILL whatever is left."""
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
