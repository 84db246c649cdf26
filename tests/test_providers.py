"""CHEXOPS_PROVIDERS: ONNX Runtime execution providers for the service (chexops.serving.providers).
This machine's onnxruntime is the CPU build: a GPU request falls back to the CPU with a warning; an
unknown name is refused before anything starts."""

from __future__ import annotations

import logging

import httpx
import pytest

from chexops.core.errors import ConfigError
from chexops.core.processes import free_port
from chexops.serving.providers import CPU, available, parse
from service_fixtures import start_service
from support import run_cli
from test_service import SYNTHETIC

CUDA = "CUDAExecutionProvider"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("", [CPU]),
        ("cpu", [CPU]),
        ("cuda", [CUDA, CPU]),
        ("cuda,cpu", [CUDA, CPU]),
        ("CPU, CUDA", [CUDA, CPU]),
        ("CUDAExecutionProvider,tensorrt", [CUDA, "TensorrtExecutionProvider", CPU]),
    ],
)
def test_parse(raw, expected):
    assert parse(raw) == expected


@pytest.mark.parametrize("raw", ["gpu", "cuda,,cpu", "CUDA;CPU"])
def test_unknown_providers_are_refused(raw):
    with pytest.raises(ConfigError, match="CHEXOPS_PROVIDERS"):
        parse(raw)


def test_missing_providers_are_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert available([CUDA, CPU], present=[CPU]) == [CPU]
    assert CUDA in caplog.text
    assert available([CUDA, CPU], present=[CUDA, CPU]) == [CUDA, CPU]


@pytest.mark.slow
def test_serve_refuses_an_unknown_provider_before_starting(served_model):
    result = run_cli(
        "serve", "--port", str(free_port()), home=served_model.home, env={"CHEXOPS_PROVIDERS": "gpu"}, timeout=120
    )
    assert result.returncode == 2 and "CHEXOPS_PROVIDERS" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_gpu_request_serves_on_the_cpu_where_there_is_no_gpu(served_model):
    svc = start_service(served_model, "providers.log", CHEXOPS_PROVIDERS="cuda,cpu")
    try:
        runtime = httpx.get(f"{svc.url}/model", timeout=30).json()["runtime"]
        assert runtime["providers"] == [CPU]
        response = httpx.post(
            f"{svc.url}/predict", headers=svc.headers, files={"image": ("x", SYNTHETIC["png16"]())}, timeout=60
        )
        assert response.status_code == 200, response.text
        assert CUDA in svc.logs()  # the fallback is said, not silent
    finally:
        svc.stop()
