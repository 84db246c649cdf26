"""A user's mistakes at the command line are one clear line and the right exit code, never a traceback: a
busy port for `chexops serve`, a missing feedback store for `chexops feedback export`, a typo in a
command-line override; and the README's usage of `simulate` shows its real defaults."""

from __future__ import annotations

import re
import socket
import time

import pytest

from chexops.core.errors import ConfigError
from support import ROOT, run_cli


def test_serve_on_a_busy_port_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = run_cli("serve", "--port", str(port), "--model", "chexops-cxr:v1", home=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
    assert "Serving" not in result.stderr  # nothing claims to serve
    assert time.monotonic() - started < 15


def test_feedback_export_of_a_missing_store_is_exit_2(tmp_path):
    home = tmp_path / "mistyped-home"
    result = run_cli("feedback", "export", "--out", str(tmp_path / "out"), home=home, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "there is no feedback store at" in result.stderr and "Traceback" not in result.stderr
    assert not (home / "feedback" / "feedback.db").exists()  # and none was created by looking
    assert not (tmp_path / "out").exists()


def test_an_override_typo_is_blamed_on_the_override(tmp_path):
    from chexops.config import load_config

    with pytest.raises(ConfigError, match=r"the command-line override 'train\.epocs=1' is not valid") as caught:
        load_config(ROOT / "configs" / "demo.yaml", ["train.epocs=1"])
    assert "demo.yaml" not in str(caught.value)
    broken = tmp_path / "demo.yaml"  # the file's own mistakes are still the file's, overrides or not
    broken.write_text((ROOT / "configs" / "demo.yaml").read_text() + "\nunknown_section: 1\n")
    with pytest.raises(ConfigError, match="demo.yaml is not a valid chexops config"):
        load_config(broken, ["train.epochs=1"])


def test_the_readme_shows_simulates_defaults():
    from chexops.cli.loop import simulate_command

    readme = (ROOT / "README.md").read_text()
    defaults = {p.opts[0]: p.default for p in simulate_command.params if p.opts and p.opts[0].startswith("--")}
    shown = dict(re.findall(r"\[(--[a-z-]+) ([^\]\s|]+)\]", readme.split("chexops simulate", 1)[1][:800]))
    assert {"--review-share", "--error-rate"} <= set(shown)
    for option, value in shown.items():
        if option in defaults and isinstance(defaults[option], (int, float)):
            assert float(value) == float(defaults[option]), (option, value, defaults[option])
