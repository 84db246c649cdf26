"""Where chexops keeps its state: one project-local directory, `$CHEXOPS_HOME` (default ./.chexops)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The state directory; created on first use."""
    path = Path(os.environ.get("CHEXOPS_HOME", ".chexops")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data() -> Path:
    """The team's shared sample data (`../shared/data`), present on our machines and in CI only."""
    return Path(os.environ.get("CHEXOPS_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def default_tracking_uri() -> str:
    """MLflow's store: `MLFLOW_TRACKING_URI` when set, else SQLite under `$CHEXOPS_HOME`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{home() / 'mlflow.db'}"


def default_artifact_location() -> str:
    return (home() / "mlartifacts").as_uri()
