"""MLflow helpers: where runs go, what identifies the code and the data, how a run and its
artifacts are read back."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from chexops.core import paths
from chexops.core.errors import UserInputError
from chexops.core.freight import IMAGE_COMMIT_ENV, running_commit

log = logging.getLogger(__name__)


def setup_mlflow(experiment: str) -> str:
    """Point MLflow at the configured store and select (or create) the experiment; returns its id."""
    import mlflow

    uri = paths.default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        mlflow.set_experiment(experiment)
        return found.experiment_id
    location = paths.default_artifact_location() if uri.startswith("sqlite:") else None
    experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_info(start: Path | None = None) -> dict[str, str]:
    """The commit this code runs from and whether the tree had changes (empty outside git). In an
    image there is no git: the image carries the commit it was built from (`$CHEXOPS_IMAGE_COMMIT`,
    chexops.core.freight); `$CHEXOPS_GIT_COMMIT` names one by hand."""
    named = os.environ.get(IMAGE_COMMIT_ENV, "").strip() or os.environ.get("CHEXOPS_GIT_COMMIT", "").strip()
    if named:
        return {"git_commit": named}
    cwd = start or Path(__file__).resolve().parent
    commit = running_commit(cwd)
    if commit is None:
        return {}
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": commit}
    return {"git_commit": commit, "git_dirty": str(bool(status.strip()))}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def mlflow_client():
    """An MlflowClient on chexops' tracking store (`MLFLOW_TRACKING_URI` or SQLite under `$CHEXOPS_HOME`)."""
    import mlflow
    from mlflow import MlflowClient

    uri = paths.default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def get_run(client, run_id: str):
    """The run, or a `UserInputError` naming the store when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise UserInputError(
            f"no MLflow run {run_id!r} at {client.tracking_uri}: {exc.message.splitlines()[0]}"
        ) from None


def download(client, run_id: str, artifact: str, dst: Path) -> Path | None:
    """A run's artifact as a local path, or None when the run has no such artifact."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact, dst_path=str(dst), tracking_uri=client.tracking_uri
            )
        )
    except (MlflowException, OSError) as exc:
        log.debug("artifact %s of run %s: %s", artifact, run_id, exc)
        return None
