"""`chexops pipeline`: run a workflow definition locally; record a pipeline's outcome in MLflow."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import click

from .errors import UserInputError

log = logging.getLogger(__name__)

EXPERIMENT = "chexops-pipelines"


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
@click.option("--local", is_flag=True, required=True, help="Run the steps as local processes (the only mode here; "
              "in the cluster: argo submit --from workflowtemplate/NAME).")
@click.option("-p", "--parameter", "parameters", multiple=True, metavar="NAME=VALUE", help="A workflow parameter (repeatable).")
@click.option("--skip", "skips", multiple=True, metavar="TASK[=REASON]", help="Skip a DAG task by name (repeatable).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="Where step outputs go [default: a temporary directory].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def run_cmd(workflow: Path, local: bool, parameters: tuple[str, ...], skips: tuple[str, ...], workdir: Path | None, as_json: bool) -> None:
    """Run WORKFLOW's entrypoint DAG here, step by step, with the template's own commands."""
    from .cli import emit, quiet_stdout
    from .pipeline_runner import run_local

    @quiet_stdout
    def go(result_stream) -> None:
        with tempfile.TemporaryDirectory(prefix="chexops-pipeline-") as tmp:
            skip = {name: reason or "--skip" for name, _, reason in (s.partition("=") for s in skips)}
            result = run_local(workflow, _parameters(parameters), workdir or Path(tmp), echo=lambda line: click.echo(line, err=True),
                               skip=skip)
        lines = [f"{n['name']:<40}{n.get('phase', ''):<11}{n.get('seconds', 0):>7.1f} s  {n.get('message', '')}" for n in result["nodes"]]
        emit(result, as_json, "\n".join([f"Workflow {result['workflow']}: {result['phase']} ({result['seconds']:.0f} s)", *lines]),
             result_stream)

    go()


def record_outcome(workflow: str, status: str | None, outcome: str | None, run_id: str | None) -> dict[str, str]:
    """One MLflow run per pipeline run (experiment chexops-pipelines, tag chexops.workflow) holding its
    status and outcome; the training run, when named, gets the same tags."""
    from mlflow.tracking import MlflowClient

    from .tracking import setup_mlflow

    experiment_id = setup_mlflow(EXPERIMENT)
    client = MlflowClient()
    found = client.search_runs([experiment_id], filter_string=f"tags.`chexops.workflow` = '{workflow}'", max_results=1)
    record = found[0].info.run_id if found else client.create_run(experiment_id, run_name=workflow,
                                                                  tags={"chexops.workflow": workflow}).info.run_id
    tags = {k: v for k, v in {"chexops.pipeline.status": status, "chexops.pipeline.outcome": outcome}.items() if v}
    if run_id:
        tags["chexops.training_run"] = run_id
        for key, value in {**tags, "chexops.pipeline.workflow": workflow}.items():
            client.set_tag(run_id, key, value)
    for key, value in tags.items():
        client.set_tag(record, key, value)
    if status:
        client.set_terminated(record, "FINISHED" if status == "Succeeded" else "FAILED")
    stored = client.get_run(record).data.tags
    return {"workflow": workflow, "record_run": record, "status": stored.get("chexops.pipeline.status", ""),
            "outcome": stored.get("chexops.pipeline.outcome", ""), "training_run": stored.get("chexops.training_run", "")}


@pipeline.command("record")
@click.option("--workflow", required=True, help="The Argo workflow's name ({{workflow.name}}).")
@click.option("--status", type=click.Choice(["Succeeded", "Failed", "Error"]), help="The workflow's final status (exit handler).")
@click.option("--outcome", type=click.Choice(["registered", "refused", "promoted", "rolled-back"]), help="What the run decided.")
@click.option("--run", "run_id", default=None, help="The training run to tag as well.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def record_cmd(workflow: str, status: str | None, outcome: str | None, run_id: str | None, as_json: bool) -> None:
    """Record a pipeline run's status or outcome in MLflow (experiment chexops-pipelines)."""
    from .cli import emit, quiet_stdout

    if not status and not outcome:
        raise UserInputError("give --status, --outcome or both.")

    @quiet_stdout
    def go(result_stream) -> None:
        result = record_outcome(workflow, status, outcome, run_id or None)
        emit(result, as_json, f"Pipeline {workflow}: status {result['status'] or '-'}, outcome {result['outcome'] or '-'} "
             f"(MLflow run {result['record_run']})", result_stream)

    go()
