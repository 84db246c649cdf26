"""A training run's MLflow side, on rank 0: start the run (or resume the same one), log what it trains
on once, its metrics as it goes, the model at the end. No torch here; mlflow is imported where it is used."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from chexops.config import Config
from chexops.core.freight import Freight, FreightMismatch
from chexops.tracking import flatten, git_info, setup_mlflow
from chexops.train.checkpoint import CHECKPOINT_DIR


def start(config: Config, run_id: str | None) -> str:
    """Start the configured experiment's run, or resume `run_id` (a checkpoint's); returns the run id."""
    import mlflow

    setup_mlflow(config.tracking.experiment)
    if config.tracking.system_metrics:
        mlflow.set_system_metrics_sampling_interval(float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", 5)))
    run = mlflow.start_run(
        run_id=run_id,
        run_name=None if run_id else (config.tracking.run_name or config.name),
        log_system_metrics=config.tracking.system_metrics,
    )
    return run.info.run_id


def log_inputs(
    config: Config, fingerprint: dict[str, Any], labels: list[str], preprocessing: dict[str, Any], tags: dict[str, str]
) -> None:
    """What a new run trains on: the config as params and artifact, code and data as tags (plus `tags`
    and, in a pipeline, the freight's), the data fingerprint, labels and preprocessing as artifacts."""
    import mlflow

    freight = freight_of(fingerprint)
    mlflow.log_params({k: ("" if v is None else v) for k, v in flatten(config.to_dict()).items()})
    data = {
        "data_version": fingerprint["data_version"],
        "data_sha256": fingerprint["sha256"],
        **{k: fingerprint[k] for k in ("prepared_data_version",) if k in fingerprint},
    }
    mlflow.set_tags({**git_info(), **data, **tags, **(freight.tags() if freight else {})})
    mlflow.log_dict(fingerprint, "data_fingerprint.json")
    mlflow.log_dict(config.to_dict(), "config.yaml")
    mlflow.log_dict({"labels": labels}, "labels.json")
    mlflow.log_dict(preprocessing, "preprocessing.json")


def freight_of(fingerprint: dict[str, Any]) -> Freight | None:
    """The run's freight (`$CHEXOPS_FREIGHT`), refused when it names other prepared data than this run reads."""
    freight = Freight.from_env()
    prepared = fingerprint.get("prepared_data_version")
    if freight is not None and freight.data_version and prepared and prepared != freight.data_version:
        raise FreightMismatch(
            f"this run reads prepared data version {prepared}, but its freight names data version "
            f"{freight.data_version}: the data changed since `chexops data prepare` of this run"
        )
    return freight


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """The metrics that are numbers (MLflow refuses NaN)."""
    import mlflow

    mlflow.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)}, step=step)


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def log_model(checkpoint: Path) -> None:
    """The final checkpoint file, as the run's `checkpoint/` artifact."""
    import mlflow

    mlflow.log_artifact(str(checkpoint), artifact_path=CHECKPOINT_DIR)


def end(seconds: float) -> None:
    """The training time as metric `train_seconds`; the run ends."""
    import mlflow

    mlflow.log_metric("train_seconds", seconds)
    mlflow.end_run()
