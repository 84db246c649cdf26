"""Shared fixtures: an isolated CHEXOPS_HOME, the team's shared data; and, registered here once for every
test module, the fixtures of the served model and services (service_fixtures) and of the closed loop
(clinic_fixtures). Test modules ask for them by name; plain helpers are imported from their module."""

from __future__ import annotations

from pathlib import Path

import pytest

from chexops.core.paths import shared_data

pytest_plugins = ["service_fixtures", "clinic_fixtures"]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own CHEXOPS_HOME and no inherited MLflow server."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("CHEXOPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture
def home(_isolated_home) -> Path:
    return _isolated_home


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_data()
    if not (path / "real-cxr").is_dir():
        pytest.skip(f"the team's shared data is not at {path} (it exists on our machines and in CI, not on a user's)")
    return path
