"""What `chexops serve` loads before it is ready (docs/benchmarks.md, "Start-up"): the CLI imports a stage's code
only when its command runs, and `chexops serve` is BentoML's arbiter itself (no `bentoml serve` interpreter
between it and the worker). Not timed: the mechanisms, each of which a regression breaks."""

from __future__ import annotations

import json
import subprocess
import sys

from support import ROOT, child_env

# What `chexops serve --help` has no use for: the heavy libraries and the other stages.
UNUSED_BY_SERVE_HELP = (
    "torch",
    "mlflow",
    "bentoml",
    "onnxruntime",
    "sqlalchemy",
    "chexops.train",
    "chexops.registry",
    "chexops.export",
    "chexops.evaluation",
    "chexops.delivery",
    "chexops.loop",
    "chexops.infra",
    "chexops.pacs",
    "chexops.cli.train",
    "chexops.cli.data",
)


def loaded_after(code: str, names: tuple[str, ...], tmp_path) -> list[str]:
    """Run `code` in a fresh interpreter; which of `names` it left in sys.modules."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([n for n in {list(names)!r} if n in sys.modules]))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120, env=child_env(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_chexops_serve_help_loads_no_other_stage_and_no_heavy_library(tmp_path):
    code = (
        "import contextlib, io\nfrom chexops.cli import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    cli.main(['serve', '--help'], prog_name='chexops', standalone_mode=False)\n"
        "assert '--model' in out.getvalue()"
    )
    assert loaded_after(code, UNUSED_BY_SERVE_HELP, tmp_path) == []


def test_the_probe_sees_a_stage_that_is_loaded(tmp_path):
    code = "from chexops.cli import cli\ncli.commands['export']"  # looked up: its module (and its stage) load
    assert set(loaded_after(code, UNUSED_BY_SERVE_HELP, tmp_path)) >= {"chexops.cli.train", "chexops.export"}


def test_every_registered_command_loads_under_its_name():
    from chexops.cli import COMMANDS, cli

    assert list(cli.commands) == list(COMMANDS) and "infra" in cli.commands
    for name in COMMANDS:
        assert cli.commands[name].name == name
        assert cli.get_command(None, name) is cli.commands[name]
    assert cli.get_command(None, "no-such-command") is None
