"""The `chexops` command: one subcommand per lifecycle step, the same locally and in Argo.

The only package that imports click: each module holds a stage's commands (options, one domain call,
a human summary) and `COMMANDS` below registers them all. Every command prints a human summary, or
with `--json` one JSON object on stdout (`chexops.cli.output`). Exit codes: 0 done, 1 failed, 2 the
user's input is wrong, 3 a gate refused.
"""

from __future__ import annotations

import logging
import sys

import click

import chexops.cli.infra_ops  # noqa: F401 - registers init, plan, apply, destroy, drift, site, check on `infra`
from chexops.cli import (
    backup,
    data,
    delivery,
    demo,
    feedback,
    freight,
    infra,
    loop,
    pacs,
    pipeline,
    serve,
    train,
    triton,
)
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


# Every command, in the order of the lifecycle.
COMMANDS = [
    freight.freight,  # create (the first step), show
    data.data,  # synth, stats, prepare
    train.train_cmd,
    train.evaluate_cmd,
    train.register_cmd,
    train.export_cmd,
    train.bento,  # import, build
    triton.triton,
    serve.serve_cmd,
    feedback.feedback,
    pacs.pacs,  # serve (the DICOM gateway), feedback
    delivery.promote_cmd,
    delivery.loadtest_cmd,
    delivery.verify_serving_cmd,
    delivery.wait_synced_cmd,
    delivery.wait_rollout_cmd,
    delivery.s3_credentials,
    pipeline.pipeline,
    loop.simulate_command,
    loop.report,
    demo.demo_cmd,
    infra.infra,
    backup.backup,  # run, restore (the platform's nightly backup)
]
for command in COMMANDS:
    cli.add_command(command)


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
