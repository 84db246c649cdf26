"""A pipeline run's status and outcome, recorded in MLflow (experiment chexops-pipelines)."""

from __future__ import annotations

from chexops.core.results import Result

EXPERIMENT = "chexops-pipelines"


class PipelineRecord(Result):
    """A pipeline run as recorded: its MLflow run, the status and outcome stored there ('' when none), the
    training run tagged ('' when none)."""

    workflow: str
    record_run: str
    status: str
    outcome: str
    training_run: str


def record_outcome(workflow: str, status: str | None, outcome: str | None, run_id: str | None) -> PipelineRecord:
    """One MLflow run per pipeline run (experiment chexops-pipelines, tag chexops.workflow) holding its
    status and outcome; the training run, when named, gets the same tags."""
    from chexops.tracking import mlflow_client, setup_mlflow

    experiment_id = setup_mlflow(EXPERIMENT)
    client = mlflow_client()
    found = client.search_runs([experiment_id], filter_string=f"tags.`chexops.workflow` = '{workflow}'", max_results=1)
    record = (
        found[0].info.run_id
        if found
        else client.create_run(experiment_id, run_name=workflow, tags={"chexops.workflow": workflow}).info.run_id
    )
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
    return PipelineRecord(
        workflow=workflow,
        record_run=record,
        status=stored.get("chexops.pipeline.status", ""),
        outcome=stored.get("chexops.pipeline.outcome", ""),
        training_run=stored.get("chexops.training_run", ""),
    )
