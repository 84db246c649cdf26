"""`chexops pipeline record`: a pipeline run's status and outcome as one MLflow run, updated in place."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from chexops.core import paths
from chexops.pipelines.record import EXPERIMENT
from support import chexops_json

pytestmark = pytest.mark.slow


def test_a_pipeline_run_is_one_record_updated_by_its_exit_handler(home):
    first = chexops_json("pipeline", "record", "--workflow", "training-abc12", "--outcome", "registered")
    assert (first["workflow"], first["status"], first["outcome"]) == ("training-abc12", "", "registered")
    training = MlflowClient(paths.default_tracking_uri()).create_run("0").info.run_id
    last = chexops_json("pipeline", "record", "--workflow", "training-abc12", "--status", "Failed", "--run", training)
    assert last["record_run"] == first["record_run"], "the exit handler updates the run's record, not a new one"
    assert (last["status"], last["outcome"], last["training_run"]) == ("Failed", "registered", training)
    client = MlflowClient(paths.default_tracking_uri())
    record = client.get_run(last["record_run"])
    assert record.info.status == "FAILED"
    assert client.get_experiment(record.info.experiment_id).name == EXPERIMENT
    tagged = client.get_run(training).data.tags
    assert tagged["chexops.pipeline.status"] == "Failed" and tagged["chexops.pipeline.workflow"] == "training-abc12"
    other = chexops_json("pipeline", "record", "--workflow", "training-zzz99", "--status", "Succeeded")
    assert other["record_run"] != first["record_run"]
