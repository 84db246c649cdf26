"""chexops.core.processes.ServerProcess: ready once its URL answers 200, a clear error with the log's tail when
the server dies or stalls (and nothing left running), stopped with all it started."""

from __future__ import annotations

import socket
import sys

import httpx
import pytest

from chexops.core.errors import ChexopsError
from chexops.core.processes import ServerProcess, free_port


def test_a_server_is_ready_when_it_answers_and_gone_after_the_block(tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    server = ServerProcess(argv, tmp_path / "server.log", url=f"http://127.0.0.1:{port}", ready_path="/", timeout=60)
    with server:
        assert httpx.get(f"{server.url}/", timeout=5).status_code == 200 and server.alive()
    assert server.process.poll() is not None and not server.alive()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing answers any more


def test_a_server_that_exits_is_an_error_with_its_log(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('no such model', flush=True); sys.exit(3)"]
    server = ServerProcess(argv, tmp_path / "server.log", url=f"http://127.0.0.1:{free_port()}", name="fake serve")
    with pytest.raises(ChexopsError, match="fake serve exited with code 3") as error:
        server.start()
    assert "no such model" in str(error.value)


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path):
    argv = [sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(120)"]
    server = ServerProcess(argv, tmp_path / "server.log", url=f"http://127.0.0.1:{free_port()}", timeout=1, name="slow")
    with pytest.raises(ChexopsError, match="slow was not ready after 1 s") as error:
        server.start()
    assert "loading" in str(error.value) and server.process.poll() is not None


def test_the_log_is_appended_to_only_when_asked(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("earlier run\n")
    ServerProcess([sys.executable, "-c", "print('second')"], log, append=True).start().process.wait(30)
    assert log.read_text() == "earlier run\nsecond\n"
    ServerProcess([sys.executable, "-c", "print('third')"], log).start().process.wait(30)
    assert log.read_text() == "third\n"
