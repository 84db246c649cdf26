"""MLflow helpers: where runs go, what identifies the code and the data."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from . import paths


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
    image there is no git: the pipeline names the commit it built from in `$CHEXOPS_GIT_COMMIT`."""
    if os.environ.get("CHEXOPS_GIT_COMMIT"):
        return {"git_commit": os.environ["CHEXOPS_GIT_COMMIT"]}
    cwd = start or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}
    except (OSError, subprocess.SubprocessError):
        return {}


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
