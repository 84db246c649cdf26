"""`chexops demo`: the whole lifecycle on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from chexops.cli.output import Output, result_output


@click.command("demo")
@click.option(
    "--config",
    "config_path",
    default="configs/demo.yaml",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
@click.option("--pacs", is_flag=True, help="Then the PACS flow: a local Orthanc, `chexops pacs serve`, SRs back.")
@result_output
def demo_cmd(config_path: Path, pacs: bool) -> Output:
    """The whole lifecycle on this machine; writes $CHEXOPS_HOME/demo/summary.json."""
    from chexops.demo.run import run_demo

    summary, report = run_demo(config_path, pacs=pacs)
    return Output(summary, report)
