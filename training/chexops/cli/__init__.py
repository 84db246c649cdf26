"""The `chexops` command: one subcommand per lifecycle step, the same locally and in Argo.

The only package that imports click: each module holds a stage's commands (options, one domain call,
a human summary) and `COMMANDS` below registers them all by name, each module imported only when its command
runs (or `--help` lists them): `chexops serve` loads no training or delivery code. Every command prints a human
summary, or with `--json` one JSON object on stdout (`chexops.cli.output`). Exit codes: 0 done, 1 failed, 2 the
user's input is wrong, 3 a gate refused.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from chexops.core.errors import ChexopsError
from chexops.core.freight import check_env as check_freight


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="chexops")
def cli(verbose: bool) -> None:
    """chexops: train, evaluate, register, export and serve a chest X-ray classifier."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "urllib3", "git", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A pipeline step refuses to run other code than its freight's commit, before doing anything.
    check_freight()


# Every command, in the order of the lifecycle: name → `module:attribute` in chexops.cli.
COMMANDS = {
    "freight": "freight:freight",  # create (the first step), show
    "data": "data:data",  # synth, stats, prepare, ingest
    "train": "train:train_cmd",
    "evaluate": "train:evaluate_cmd",
    "register": "train:register_cmd",
    "export": "train:export_cmd",
    "bento": "train:bento",  # import, build
    "triton": "triton:triton",
    "serve": "serve:serve_cmd",
    "feedback": "feedback:feedback",
    "pacs": "pacs:pacs",  # serve (the DICOM gateway), feedback
    "promote": "delivery:promote_cmd",
    "loadtest": "delivery:loadtest_cmd",
    "verify-serving": "delivery:verify_serving_cmd",
    "wait-synced": "delivery:wait_synced_cmd",
    "wait-rollout": "delivery:wait_rollout_cmd",
    "s3-credentials": "delivery:s3_credentials",
    "pipeline": "pipeline:pipeline",
    "simulate": "loop:simulate_command",
    "report": "loop:report",
    "backup": "backup:backup",  # run, restore (the platform's nightly backup)
    "demo": "demo:demo_cmd",
    "infra": "infra_ops:infra",  # cli/infra.py's group, with infra_ops' init, plan, apply, destroy, drift, site, check
}


class LazyCommands(dict):
    """`cli.commands`: each name's command, its module imported on first look-up (`in` imports nothing)."""

    def __getitem__(self, name: str) -> click.Command:
        command = super().__getitem__(name)
        if isinstance(command, str):
            module, _, attribute = command.partition(":")
            command = getattr(importlib.import_module(f"chexops.cli.{module}"), attribute)
            super().__setitem__(name, command)
        return command

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def values(self):
        return [self[name] for name in self]

    def items(self):
        return [(name, self[name]) for name in self]


cli.commands = LazyCommands(COMMANDS)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one paragraph on stderr and an exit code, never a traceback."""
    try:
        cli.main(args=argv, prog_name="chexops", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ChexopsError as exc:
        click.echo(f"chexops: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    sys.exit(0)
