"""Fixtures for the closed-loop tests (simulate, drift, business report), shared by their modules:

- `clinic_data` (session): a small synthetic CheXpert-v1.0-small (train + valid, 48 px), the clinic's studies.
- `clinic_service(served_model, tmp, name, **env)`: a real `bentoml serve` of a fixture model with its own
  feedback store (SQLite under `tmp`), so that the counts a test reads are its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service_fixtures import Service, start_service


@pytest.fixture(scope="session")
def clinic_data(tmp_path_factory) -> Path:
    from chexops.data.synth import synthesize

    root = tmp_path_factory.mktemp("clinic-data")
    synthesize(root, patients=40, valid_patients=24, image_size=48, seed=3, progress=False)
    return root / "CheXpert-v1.0-small"


def clinic_service(model, tmp: Path, name: str, **env: str) -> Service:
    """A service of `model` whose feedback goes to `tmp/name.db`."""
    return start_service(model, f"{name}.log", CHEXOPS_FEEDBACK_URL=f"sqlite:///{tmp / (name + '.db')}", **env)
