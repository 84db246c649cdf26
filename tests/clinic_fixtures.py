"""Fixtures for the closed-loop tests (simulate, drift, business report), shared by their modules. Module scope:
each module gets fresh services (a service's drift window, metrics and feedback are what that module sent it).

- `clinic_data` (module): a small synthetic CheXpert-v1.0-small (train + valid, 48 px), the clinic's studies.
- `clinic_model` (module): the tiny fixture model (`service_fixtures.make_model`) with a drift reference computed,
  as `chexops export` does, from the training images of `clinic_data`; in the Bento store of its own home.
- `clinic_service(model, tmp, name, **env)`: a real `bentoml serve` of a model with its own feedback store
  (SQLite under `tmp`).
- `clinic` (module): `Clinic(service, store_url)`, the fp32 service of `clinic_model`, drift window `DRIFT_WINDOW`.
- `clinic_b` (module): the int8 service of `clinic_model` (another model variant), rate-limited to 10 requests a
  second with a burst of 3: steady traffic below that passes, a burst of 8 meets 429s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from service_fixtures import ROOT, ServedModel, Service, make_model, start_service
from support import child_env


@pytest.fixture(scope="module")
def clinic_data(tmp_path_factory) -> Path:
    from chexops.data.synth import synthesize

    root = tmp_path_factory.mktemp("clinic-data")
    synthesize(root, patients=40, valid_patients=24, image_size=48, seed=3, progress=False)
    return root / "CheXpert-v1.0-small"


def training_inputs(data: Path, spec, limit: int = 128):
    import numpy as np

    from chexops.core.labels import CHEXPERT_LABELS
    from chexops.data.chexpert import image_paths, read_chexpert_csv
    from chexops.imaging.preprocessing import load_image, preprocess

    paths = image_paths(read_chexpert_csv(data / "train.csv", list(CHEXPERT_LABELS)), data.parent)[:limit]
    return np.stack([preprocess(load_image(p), spec) for p in paths])


def drift_reference(data: Path):
    """`extra_metadata` for make_model: the drift reference of the training images, as export computes it."""

    def extra(fp32, spec, labels):
        from chexops.export import quantize
        from chexops.export.files import session
        from chexops.imaging import drift

        x = training_inputs(data, spec)
        probs = quantize.run_batches(session(fp32), x)["probabilities"]
        return {drift.REFERENCE_KEY: drift.reference_json(x, probs, spec, labels)}

    return extra


@pytest.fixture(scope="module")
def clinic_model(tmp_path_factory, clinic_data) -> ServedModel:
    home = tmp_path_factory.mktemp("clinic-home")
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "make-model", str(home), str(clinic_data)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(home),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return ServedModel(home, json.loads(result.stdout.strip().splitlines()[-1])["tag"])


def clinic_service(model: ServedModel, tmp: Path, name: str, **env: str) -> Service:
    """A service of `model` whose feedback goes to `tmp/name.db`."""
    return start_service(model, f"{name}.log", CHEXOPS_FEEDBACK_URL=f"sqlite:///{tmp / (name + '.db')}", **env)


DRIFT_WINDOW = 40


class Clinic(NamedTuple):
    service: Service
    store_url: str


def _clinic(model, tmp_path_factory, name: str, **env: str):
    tmp = tmp_path_factory.mktemp(name)
    svc = clinic_service(model, tmp, name, **env)
    return Clinic(svc, f"sqlite:///{tmp / (name + '.db')}")


@pytest.fixture(scope="module")
def clinic(clinic_model, tmp_path_factory):
    made = _clinic(
        clinic_model, tmp_path_factory, "clinic", CHEXOPS_DRIFT_WINDOW=str(DRIFT_WINDOW), CHEXOPS_DRIFT_MIN_IMAGES="20"
    )
    yield made
    made.service.stop()


@pytest.fixture(scope="module")
def clinic_b(clinic_model, tmp_path_factory):
    made = _clinic(
        clinic_model,
        tmp_path_factory,
        "clinic-b",
        CHEXOPS_PRECISION="int8",
        CHEXOPS_RATE_LIMIT="600",
        CHEXOPS_RATE_BURST="3",
    )
    yield made
    made.service.stop()


if __name__ == "__main__":  # python tests/clinic_fixtures.py make-model HOME DATA
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        made = make_model(Path(sys.argv[2]), extra_metadata=drift_reference(Path(sys.argv[3])))
    print(json.dumps({"tag": made}))
