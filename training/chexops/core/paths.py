"""Where chexops keeps its state (one project-local directory, `$CHEXOPS_HOME`, default ./.chexops) and
where the source checkout and the team's shared data are."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the repository (bentos/, configs/, workflows/) in a source checkout
HOME_DIR = ".chexops"


def home() -> Path:
    """The state directory; created on first use."""
    path = Path(os.environ.get("CHEXOPS_HOME", HOME_DIR)).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data() -> Path:
    """The team's shared sample data (`../shared/data`), present on our machines and in CI only."""
    return Path(os.environ.get("CHEXOPS_SHARED_DATA", ROOT.parent / "shared" / "data"))


def default_tracking_uri() -> str:
    """MLflow's store: `MLFLOW_TRACKING_URI` when set, else SQLite under `$CHEXOPS_HOME`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{home() / 'mlflow.db'}"


def default_artifact_location() -> str:
    return (home() / "mlartifacts").as_uri()


def bentoml_home() -> Path:
    """`BENTOML_HOME`, defaulting (for this process and its children) to `$CHEXOPS_HOME/bentoml`."""
    os.environ.setdefault("BENTOML_HOME", str(home() / "bentoml"))
    return Path(os.environ["BENTOML_HOME"])
