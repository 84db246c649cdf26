"""`chexops pipeline`: run a workflow definition locally; record a pipeline's outcome in MLflow."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import click

from chexops.cli.output import Output, result_output
from chexops.core.errors import UserInputError

log = logging.getLogger(__name__)


@click.group()
def pipeline() -> None:
    """Pipelines (Argo WorkflowTemplates in workflows/): run one locally, record an outcome."""


def _parameters(values: tuple[str, ...]) -> dict[str, str]:
    parsed = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise UserInputError(f"-p {value!r}: expected NAME=VALUE.")
        parsed[name] = text
    return parsed


@pipeline.command("run")
@click.argument("workflow", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--local",
    is_flag=True,
    required=True,
    help="Run the steps as local processes (the only mode here; "
    "in the cluster: argo submit --from workflowtemplate/NAME).",
)
@click.option(
    "-p", "--parameter", "parameters", multiple=True, metavar="NAME=VALUE", help="A workflow parameter (repeatable)."
)
@click.option("--skip", "skips", multiple=True, metavar="TASK[=REASON]", help="Skip a DAG task by name (repeatable).")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where step outputs go [default: a temporary directory].",
)
@result_output
def run_cmd(
    workflow: Path,
    local: bool,  # noqa: ARG001 - --local is required, and the only mode
    parameters: tuple[str, ...],
    skips: tuple[str, ...],
    workdir: Path | None,
) -> Output:
    """Run WORKFLOW's entrypoint DAG here, step by step, with the template's own commands."""
    from chexops.pipelines.runner import run_local

    with tempfile.TemporaryDirectory(prefix="chexops-pipeline-") as tmp:
        skip = {name: reason or "--skip" for name, _, reason in (s.partition("=") for s in skips)}
        result = run_local(
            workflow,
            _parameters(parameters),
            workdir or Path(tmp),
            echo=lambda line: click.echo(line, err=True),
            skip=skip,
        )
    lines = [
        f"{n['name']:<40}{n.get('phase', ''):<11}{n.get('seconds', 0):>7.1f} s  {n.get('message', '')}"
        for n in result.nodes
    ]
    return Output(result, "\n".join([f"Workflow {result.workflow}: {result.phase} ({result.seconds:.0f} s)", *lines]))


@pipeline.command("record")
@click.option("--workflow", required=True, help="The Argo workflow's name ({{workflow.name}}).")
@click.option(
    "--status", type=click.Choice(["Succeeded", "Failed", "Error"]), help="The workflow's final status (exit handler)."
)
@click.option(
    "--outcome", type=click.Choice(["registered", "refused", "promoted", "rolled-back"]), help="What the run decided."
)
@click.option("--run", "run_id", default=None, help="The training run to tag as well.")
@result_output
def record_cmd(workflow: str, status: str | None, outcome: str | None, run_id: str | None) -> Output:
    """Record a pipeline run's status or outcome in MLflow (experiment chexops-pipelines)."""
    from chexops.pipelines.record import record_outcome

    if not status and not outcome:
        raise UserInputError("give --status, --outcome or both.")
    result = record_outcome(workflow, status, outcome, run_id or None)
    return Output(
        result,
        f"Pipeline {workflow}: status {result.status or '-'}, outcome {result.outcome or '-'} "
        f"(MLflow run {result.record_run})",
    )
