"""`chexops demo` (what `make demo` runs) chains the steps and writes summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from chexops.core.freight import running_commit
from support import run_cli

pytestmark = pytest.mark.slow


def test_demo_writes_summary_with_training_metrics(tmp_path, home):
    config = yaml.safe_load(open("configs/demo.yaml"))
    config["preprocess"]["size"] = 32
    config["model"]["width"] = 8
    config["train"].update(epochs=3, patience=None)  # 3 epochs: the tiny model clears the default gate on its interval
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config))

    result = run_cli("demo", "--config", str(tmp_path / "demo.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out     mean AUROC" in result.stdout and "Cardiomegaly" in result.stdout

    summary = json.loads((home / "demo" / "summary.json").read_text())
    # the steps are the training WorkflowTemplate's tasks, run from workflows/training.yaml
    nodes = {n["name"]: n for n in summary["pipeline"]["nodes"]}
    assert summary["pipeline"]["file"] == "workflows/training.yaml" and summary["pipeline"]["phase"] == "Succeeded"
    assert all(
        nodes[t]["phase"] == "Succeeded"
        for t in ("main.train", "main.evaluate", "main.gate.register", "main.export", "main.bento")
    )
    assert nodes["main.image"]["phase"] == "Skipped" and nodes["main.gate.refused"]["phase"] == "Omitted"
    assert nodes["main.train"]["command"][:2] == ["torchrun", "--standalone"]
    assert "▶ main.train: torchrun" in result.stderr and "main.gate.register" in result.stdout
    train = summary["train"]
    assert summary["data"]["train_rows"] > 1000
    run = MlflowClient(train["tracking_uri"]).get_run(train["run_id"])
    assert run.data.metrics["best_val_mean_auroc"] == train["mean_auroc"]
    assert train["tracking_uri"] == f"sqlite:///{home / 'mlflow.db'}"

    # The run's freight, created from the checkout's HEAD and carried through the steps: prepare adds
    # the data version, register the version it made; tagged on the MLflow run and the registry version.
    head = running_commit()
    freights = {
        n["name"]: json.loads(n["outputs"]["freight"])
        for n in summary["pipeline"]["nodes"]
        if n.get("outputs", {}).get("freight")
    }
    data_version = summary["prepare"]["data_version"]
    assert freights["main.freight"] == {"commit": head}
    assert freights["main.prepare"] == freights["main.train"] == {"commit": head, "data_version": data_version}
    registered = {**freights["main.prepare"], "model_name": "chexops-cxr", "model_version": "1"}
    assert freights["main.gate.register"] == freights["main.gate"] == freights["main.bento"] == registered
    assert run.data.tags["freight.commit"] == run.data.tags["git_commit"] == head
    assert json.loads(run.data.tags["freight"]) == freights["main.prepare"]
    version = MlflowClient(train["tracking_uri"]).get_model_version("chexops-cxr", "1")
    assert json.loads(version.tags["freight"]) == registered and version.tags["freight.model_version"] == "1"

    evaluation = summary["evaluate"]
    assert evaluation["run_id"] == train["run_id"] and set(evaluation["thresholds"]) == set(train["labels"])
    # The gate judged held-out evidence: the test split (valid.csv), the same number training measured
    # there with the same weights, and named the evaluation it judged.
    assert evaluation["split"] == "test" and evaluation["mean_auroc"] == pytest.approx(
        train["test"]["mean_auroc"], abs=1e-5
    )
    assert summary["registry"]["evaluation_id"] == evaluation["evaluation_id"]
    verdicts = {g["criterion"]: g for g in summary["registry"]["gate"]}
    assert verdicts["held_out"]["passed"] and verdicts["min_mean_auroc"]["value"] == pytest.approx(
        evaluation["mean_auroc_ci"][0], abs=1e-6
    )
    assert (summary["registry"]["model"], summary["registry"]["version"], summary["registry"]["alias"]) == (
        "chexops-cxr",
        "1",
        "candidate",
    )
    export = summary["export"]
    assert Path(export["fp32"]).is_file() and Path(export["int8"]).is_file()
    assert export["passed"] and export["evaluated"] and export["thresholds"] == summary["evaluate"]["thresholds"]
    assert summary["bento_model"]["tag"] == "chexops-cxr:v1"
    service = summary["service"]
    assert service["reference"] == "models:/chexops-cxr@candidate"  # served by registry reference
    assert (service["model"]["name"], service["model"]["version"]) == ("chexops-cxr", "1")
    assert len(service["images"]) >= 3 and all(
        item["priority"] in ("urgent", "review", "routine") for item in service["images"]
    )
    assert "clinic endpoint" in result.stdout and service["images"][0]["file"] in result.stdout

    again = run_cli("demo", "--config", str(tmp_path / "demo.yaml"), "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout)
    assert second["data"]["reused"] is True and second["train"]["run_id"] != train["run_id"]
    assert second["registry"]["version"] == "2" and second["bento_model"]["tag"] == "chexops-cxr:v2"
    assert second["service"]["model"]["version"] == "2"  # @candidate moved: the service followed the registry
