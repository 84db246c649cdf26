"""Fixtures for tests of the clinic endpoint (bentos/service.py), shared by test_service.py and
test_webpage.py: a tiny exported model in a Bento model store, and a REAL `bentoml serve` process.

Registered for every test by tests/conftest.py (`pytest_plugins`): ask for the fixtures by name.

- `served_model` (module scope: a module's services keep their feedback, images and metrics under its home,
  and no other module's are there): `ServedModel(home, tag)`; a small CNN with fixed random weights,
  exported to ONNX fp32 + static int8 with the real chexops metadata (`chexops.export.onnx`), per-label
  thresholds that are not 0.5 (`THRESHOLDS`: the service must apply the file's own), and imported
  into `home/bentoml` as `chexops-cxr:v1` (`chexops.export.bento.import_onnx`). No MLflow, no training:
  a few seconds. Built in a child process so that this process's BentoML settings stay untouched.
- `service` (module scope): `Service(url, api_key, home, port, server)`, a `bentoml serve` child on a
  free 127.0.0.1 port with `CHEXOPS_API_KEYS` set, ready (/readyz answers 200) before the first test;
  killed after the module. `start_service(...)` starts others (other env, a restart on the same home).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest

from chexops.core.processes import ServerProcess, free_port
from support import child_env

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-clinic-key-0123456789"
OTHER_KEY = "other-clinic-key-9876543210"
MODEL_TAG = "chexops-cxr:v1"
SIZE = 32
EXPORT = Path("exports") / "tiny"  # under the model's home: model.onnx, model.int8.onnx


def thresholds_for(labels: list[str]) -> dict[str, float]:
    """Distinct thresholds from 0.2 to 0.8 (none 0.5): a service that ignored them would be caught."""
    values = {label: round(0.2 + 0.6 * i / (len(labels) - 1), 2) for i, label in enumerate(labels)}
    return {label: value + 0.01 if value == 0.5 else value for label, value in values.items()}


class ServedModel(NamedTuple):
    home: Path
    tag: str


def make_model(home: Path, version: str = "1", extra_metadata=None) -> str:
    """(In a child process) a tiny exported model (registry version `version`) in `home/bentoml`; returns its Bento tag.
    `extra_metadata(fp32_path, spec, labels)` returns more metadata entries (e.g. a drift reference)."""
    import numpy as np
    import torch

    from chexops.config import ModelConfig
    from chexops.core.labels import CHEXPERT_LABELS
    from chexops.export.bento import import_onnx
    from chexops.export.onnx import INT8_FILE, build_metadata, export_onnx, write_metadata
    from chexops.export.quantize import quantize_static_qdq
    from chexops.imaging.preprocessing import PreprocessSpec
    from chexops.train.models import build_model

    torch.manual_seed(0)
    labels = list(CHEXPERT_LABELS)
    spec = PreprocessSpec(size=SIZE, channels=1, mean=(0.45,), std=(0.25,))
    model = build_model(ModelConfig(name="small", width=8, pretrained_weights=None), len(labels), spec).eval()
    with torch.no_grad():  # spread the probabilities so that some findings are positive, some not
        model.head.bias.copy_(torch.linspace(-2.0, 2.0, len(labels)))
    out = home / (EXPORT if version == "1" else EXPORT.with_name(f"{EXPORT.name}-v{version}"))
    fp32 = export_onnx(model, spec, out / "model.onnx")
    thresholds = thresholds_for(labels)
    metadata = build_metadata(
        labels=labels,
        thresholds=thresholds,
        rule="test",
        spec=spec,
        model_name="chexops-cxr",
        registry_version=version,
        run_id="0123456789abcdef0123456789abcdef",
        data_version="test-data",
        head_weight=model.head.weight.detach().numpy(),
        head_bias=model.head.bias.detach().numpy(),
    )
    write_metadata(fp32, metadata)
    if extra_metadata is not None:
        metadata.update(extra_metadata(fp32, spec, labels))
        write_metadata(fp32, metadata)
    calibration = np.random.default_rng(0).normal(0, 1, (16, 1, SIZE, SIZE)).astype(np.float32)
    int8 = quantize_static_qdq(fp32, out / INT8_FILE, calibration)
    write_metadata(int8, {**metadata, "precision": "int8-static-qdq"})
    return import_onnx(fp32, int8).tag


def add_model(home: Path, version: str = "1") -> ServedModel:
    """`make_model` in a child process (this process's BentoML settings stay untouched)."""
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "make-model", str(home), version],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(home),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return ServedModel(home, json.loads(result.stdout.strip().splitlines()[-1])["tag"])


@pytest.fixture(scope="module")
def served_model(tmp_path_factory) -> ServedModel:
    return add_model(tmp_path_factory.mktemp("service-home"))


@dataclass
class Service:
    url: str
    api_key: str
    home: Path
    port: int
    server: ServerProcess = field(repr=False)
    env: dict[str, str] = field(repr=False, default_factory=dict)

    @property
    def process(self) -> subprocess.Popen:
        return self.server.process

    @property
    def log_path(self) -> Path:
        return self.server.log_path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def logs(self) -> str:
        """The whole log (every restart on it)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Stop the server and all its workers (SIGKILL: as a crash would)."""
        self.server.stop(sig, timeout)


def start_service(
    model: ServedModel, log_name: str = "service.log", api_key: str = API_KEY, port: int | None = None, **env: str
) -> Service:
    """`bentoml serve bentos/service.py:Chexops` on a free port (or `port`), ready; CHEXOPS_* settings from `env` (by
    default rate limits high enough for a test battery, all from 127.0.0.1, an admission queue that never refuses one,
    and an 8 MiB upload limit)."""
    port = port or free_port()
    settings = {
        "CHEXOPS_MODEL": model.tag,
        "CHEXOPS_API_KEYS": f"test-clinic:{api_key},other-clinic:{OTHER_KEY}",
        "CHEXOPS_RATE_LIMIT": "60000",
        "CHEXOPS_RATE_BURST": "1000",
        "CHEXOPS_ADDRESS_RATE_LIMIT": "60000",
        "CHEXOPS_ADDRESS_RATE_BURST": "1000",
        "CHEXOPS_AUTH_FAILURE_LIMIT": "1000",
        "CHEXOPS_MAX_UPLOAD_MB": "8",
        "CHEXOPS_MAX_QUEUE": "1000",
        "CHEXOPS_QUEUE_TIMEOUT_MS": "120000",
        **env,
    }  # admission out of the way
    full_env = child_env(model.home, **settings)
    url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "bentos/service.py:Chexops",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = ServerProcess(
        argv, model.home / log_name, url=url, env=full_env, cwd=ROOT, name="bentoml serve", append=True
    )
    return Service(url, api_key, model.home, port, server.start(), full_env)


@pytest.fixture(scope="module")
def service(served_model):
    svc = start_service(served_model)
    yield svc
    svc.stop()


if __name__ == "__main__":  # python tests/service_fixtures.py make-model HOME
    if len(sys.argv) in (3, 4) and sys.argv[1] == "make-model":
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):
            made = make_model(Path(sys.argv[2]), *sys.argv[3:])
        print(json.dumps({"tag": made}))
    else:
        sys.exit("usage: service_fixtures.py make-model HOME [VERSION]")
