"""The service's settings (chexops.serving.settings): every CHEXOPS_* variable's default and parsing, a bad
value as a ConfigError naming the variable, bentos/README.md's table equal to the class, and `chexops serve`
refusing a bad variable before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chexops.core import paths
from chexops.core.errors import ConfigError
from chexops.serving.faults import FaultSpec
from chexops.serving.settings import Settings, settings_table, variable
from service_fixtures import child_env, free_port
from support import ROOT, run_cli

VARIABLES = [variable(name) for name in Settings.model_fields]
DEFAULTS = {
    "CHEXOPS_MODEL": ("model_tag", "models:/chexops-cxr@candidate"),
    "CHEXOPS_PRECISION": ("precision", "fp32"),
    "CHEXOPS_THREADS": ("threads", 2),
    "CHEXOPS_PROVIDERS": ("providers", "cpu"),
    "CHEXOPS_MAX_INFLIGHT": ("max_inflight", 2),
    "CHEXOPS_MAX_QUEUE": ("max_queue", 16),
    "CHEXOPS_QUEUE_TIMEOUT_MS": ("queue_timeout_ms", 500),
    "CHEXOPS_BATCHING": ("batching", False),
    "CHEXOPS_MAX_BATCH_SIZE": ("max_batch_size", 16),
    "CHEXOPS_MAX_LATENCY_MS": ("max_latency_ms", 2000),
    "CHEXOPS_API_KEYS": ("api_keys", ""),
    "CHEXOPS_API_KEYS_FILE": ("api_keys_file", ""),
    "CHEXOPS_RATE_LIMIT": ("rate_per_minute", 120.0),
    "CHEXOPS_RATE_BURST": ("rate_burst", 20),
    "CHEXOPS_ADDRESS_RATE_LIMIT": ("address_rate_per_minute", 0),
    "CHEXOPS_ADDRESS_RATE_BURST": ("address_burst", 80),
    "CHEXOPS_AUTH_FAILURE_LIMIT": ("auth_failures_per_minute", 10),
    "CHEXOPS_MAX_UPLOAD_MB": ("max_upload_bytes", 20 * 2**20),
    "CHEXOPS_MAX_PIXELS": ("max_pixels", 4096 * 4096),
    "CHEXOPS_UPLOAD_TIMEOUT_S": ("upload_timeout_s", 30.0),
    "CHEXOPS_MIN_UPLOAD_RATE": ("min_upload_kib_per_s", 16.0),
    "CHEXOPS_MAX_UPLOADS_PER_CLIENT": ("max_uploads_per_client", 8),
    "CHEXOPS_MAX_HEADER_KB": ("max_header_kb", 32),
    "CHEXOPS_TRUSTED_PROXIES": ("trusted_proxies", ""),
    "CHEXOPS_MODALITIES": ("modalities", frozenset({"CR", "DX"})),
    "CHEXOPS_FEEDBACK_URL": ("feedback_url", ""),
    "CHEXOPS_IMAGE_STORE": ("image_store", ""),
    "CHEXOPS_FEEDBACK_IMAGE_SIDE": ("stored_image_side", 1024),
    "CHEXOPS_STATIC_DIR": ("static_dir", paths.ROOT / "bentos" / "static"),
    "CHEXOPS_DRIFT_WINDOW": ("drift_window", 200),
    "CHEXOPS_DRIFT_MIN_IMAGES": ("drift_min_images", 30),
    "CHEXOPS_ENVIRONMENT": ("environment", "development"),
    "CHEXOPS_TRACK": ("track", "stable"),
    "CHEXOPS_FREIGHT": ("freight", ""),
    "CHEXOPS_FAULT_INJECTION": ("faults", None),
}


@pytest.fixture
def env(monkeypatch):
    """No CHEXOPS_* service variable inherited (any case: the names are matched case-insensitively)."""
    for name in os.environ:
        if name.upper() in VARIABLES:
            monkeypatch.delenv(name)
    return monkeypatch


def value(settings: Settings, attribute: str):
    got = getattr(settings, attribute)
    return got.get_secret_value() if attribute == "api_keys" else got


def test_every_variable_is_declared_once_with_a_description():
    assert sorted(VARIABLES) == sorted(DEFAULTS) and len(set(VARIABLES)) == len(VARIABLES)
    assert all(info.description for info in Settings.model_fields.values())


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_defaults(env, blank):
    """Unset or blank, each variable has its default."""
    if blank is not None:
        for name in VARIABLES:
            env.setenv(name, blank)
    settings = Settings.from_env()
    assert {name: value(settings, attribute) for name, (attribute, _) in DEFAULTS.items()} == {
        name: default for name, (_, default) in DEFAULTS.items()
    }
    assert settings.feedback_location() == f"sqlite:///{paths.home() / 'feedback' / 'feedback.db'}"


def test_values_are_parsed_as_the_service_uses_them(env, tmp_path):
    for name, raw in {
        "CHEXOPS_MODEL": " chexops-cxr:v3 ",
        "CHEXOPS_PRECISION": "INT8",
        "CHEXOPS_THREADS": "4",
        "CHEXOPS_PROVIDERS": "cuda, cpu",
        "CHEXOPS_MAX_QUEUE": "0",
        "CHEXOPS_MAX_UPLOAD_MB": "8",
        "CHEXOPS_RATE_LIMIT": "0.5",
        "CHEXOPS_MODALITIES": "cr, dx ,MG,",
        "CHEXOPS_STATIC_DIR": str(tmp_path),
        "CHEXOPS_FEEDBACK_URL": "sqlite:////tmp/f.db",
        "CHEXOPS_ENVIRONMENT": "Staging",
        "CHEXOPS_TRACK": "CANARY",
        "CHEXOPS_FAULT_INJECTION": "error_rate=0.5,delay_ms=300",
    }.items():
        env.setenv(name, raw)
    settings = Settings.from_env()
    assert (settings.model_tag, settings.precision, settings.threads) == ("chexops-cxr:v3", "int8", 4)
    assert settings.execution_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert settings.max_queue == 0 and settings.max_upload_bytes == 8 * 2**20 and settings.rate_per_minute == 0.5
    assert settings.image_limits().modalities == frozenset({"CR", "DX", "MG"})
    assert settings.image_limits().max_bytes == 8 * 2**20 and settings.static_dir == tmp_path
    assert settings.feedback_location() == "sqlite:////tmp/f.db"
    assert (settings.environment, settings.track) == ("staging", "canary")
    assert settings.faults == FaultSpec(0.5, 300)


@pytest.mark.parametrize(
    "raw, on", [("1", True), ("yes", True), ("on", True), ("0", False), ("false", False), ("No", False), ("OFF", False)]
)
def test_batching_switch(env, raw, on):
    env.setenv("CHEXOPS_BATCHING", raw)
    assert Settings.from_env().batching is on


def test_settings_are_frozen_and_keep_keys_out_of_their_repr(env):
    env.setenv("CHEXOPS_API_KEYS", "north:north-secret-key")
    settings = Settings.from_env()
    assert "north-secret-key" not in repr(settings)
    with pytest.raises(Exception, match="frozen"):
        settings.threads = 8


@pytest.mark.parametrize(
    "name, raw, message",
    [
        ("CHEXOPS_DRIFT_WINDOW", "abc", "CHEXOPS_DRIFT_WINDOW must be a whole number, got 'abc'."),  # int
        ("CHEXOPS_THREADS", "2.5", "CHEXOPS_THREADS must be a whole number, got '2.5'."),
        ("CHEXOPS_MAX_INFLIGHT", "0", "CHEXOPS_MAX_INFLIGHT must be at least 1, got 0."),
        ("CHEXOPS_MAX_QUEUE", "-1", "CHEXOPS_MAX_QUEUE must be at least 0, got -1."),
        ("CHEXOPS_DRIFT_MIN_IMAGES", "0", "CHEXOPS_DRIFT_MIN_IMAGES must be at least 1, got 0."),
        ("CHEXOPS_FEEDBACK_IMAGE_SIDE", "big", "CHEXOPS_FEEDBACK_IMAGE_SIDE must be a whole number, got 'big'."),
        ("CHEXOPS_RATE_LIMIT", "fast", "CHEXOPS_RATE_LIMIT must be a number, got 'fast'."),  # float
        ("CHEXOPS_MAX_UPLOAD_MB", "0", "CHEXOPS_MAX_UPLOAD_MB must be above 0, got 0."),
        ("CHEXOPS_PRECISION", "fp16", "CHEXOPS_PRECISION must be 'fp32' or 'int8', got 'fp16'."),  # enum
        ("CHEXOPS_TRACK", "beta", "CHEXOPS_TRACK must be 'stable' or 'canary', got 'beta'."),
        (
            "CHEXOPS_ENVIRONMENT",
            "my env",
            "CHEXOPS_ENVIRONMENT must be a short lower-case name (staging, production, ...), got 'my env'.",
        ),
        ("CHEXOPS_PROVIDERS", "cuda,,cpu", "CHEXOPS_PROVIDERS: unknown execution provider ''"),  # list
        ("CHEXOPS_PROVIDERS", "gpu", "CHEXOPS_PROVIDERS: unknown execution provider 'gpu'"),
        (
            "CHEXOPS_API_KEYS",
            "north:short",
            "CHEXOPS_API_KEYS: the key of clinic 'north' is shorter than 8 characters.",
        ),
        ("CHEXOPS_FAULT_INJECTION", "error_rate=2", "CHEXOPS_FAULT_INJECTION: error_rate must be within 0..1"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable(env, name, raw, message):
    env.setenv(name, raw)
    with pytest.raises(ConfigError) as err:
        Settings.from_env()
    assert str(err.value).startswith(message), str(err.value)
    assert "pydantic" not in str(err.value) and "validation error" not in str(err.value)


def test_every_bad_value_is_named_at_once(env):
    env.setenv("CHEXOPS_THREADS", "0")
    env.setenv("CHEXOPS_RATE_BURST", "many")
    with pytest.raises(ConfigError) as err:
        Settings()
    assert str(err.value).splitlines() == [
        "CHEXOPS_THREADS must be at least 1, got 0.",
        "CHEXOPS_RATE_BURST must be a whole number, got 'many'.",
    ]


def test_fault_injection_is_refused_in_production(env):
    env.setenv("CHEXOPS_FAULT_INJECTION", "delay_ms=10")
    env.setenv("CHEXOPS_ENVIRONMENT", "production")
    with pytest.raises(ConfigError, match="refused when CHEXOPS_ENVIRONMENT is production"):
        Settings.from_env()


def test_the_readme_table_is_the_settings_table():
    """bentos/README.md holds settings_table() verbatim: a new variable or a changed default fails here until
    the README follows (paste the table printed below)."""
    readme = (ROOT / "bentos" / "README.md").read_text()
    section = readme.split("## Configuration (environment)\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    expected = settings_table()
    assert "\n".join(rows) + "\n" == expected, f"bentos/README.md's table of variables is out of date:\n\n{expected}"
    for name in VARIABLES:
        assert f"| `{name}` |" in expected


def test_only_the_settings_read_the_service_variables():
    """admission, drift, providers and auth take their values from the settings, not from the environment."""
    package = Path(paths.ROOT / "training" / "chexops")
    for module in [*(package / "serving").glob("*.py"), *(package / "imaging").glob("*.py")]:
        if module.name in ("settings.py", "launch.py"):  # launch builds the environment of `bentoml serve`
            continue
        text = module.read_text()
        if module.name == "metrics.py":  # it moves BentoML's PROMETHEUS_MULTIPROC_DIR, no CHEXOPS_* variable
            assert not any(f'os.environ{how}"CHEXOPS_' in text for how in ("[", ".get(")), module
            continue
        assert "os.environ" not in text, module


def test_serve_refuses_a_bad_variable_before_starting(tmp_path):
    result = run_cli(
        "serve",
        "--port",
        str(free_port()),
        "--model",
        "chexops-cxr:v1",
        env=child_env(tmp_path, CHEXOPS_DRIFT_WINDOW="abc"),
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "CHEXOPS_DRIFT_WINDOW must be a whole number, got 'abc'." in result.stderr
    assert "Traceback" not in result.stderr and "pydantic" not in result.stderr
