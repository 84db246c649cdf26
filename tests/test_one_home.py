"""Facts with one home in the code that other files repeat for their readers: the copies agree with the home."""

from __future__ import annotations

import re

import yaml

from chexops.core.triage import URGENT
from chexops.evaluation.gate import GateConfig, load_gate_config
from support import ROOT


def test_configs_gate_yaml_shows_every_gate_default():
    """configs/gate.yaml repeats GateConfig's defaults for operators: every limit, each the same value."""
    path = ROOT / "configs" / "gate.yaml"
    assert set(yaml.safe_load(path.read_text())["gate"]) == set(GateConfig.model_fields)
    assert load_gate_config(path, {}) == GateConfig()


def test_the_service_readme_names_the_urgent_findings_of_the_triage_rule():
    text = " ".join((ROOT / "bentos" / "README.md").read_text().split())
    listed = re.search(r"`urgent` if (.+?) is positive", text)
    assert listed, "bentos/README.md no longer states the triage rule"
    assert set(re.split(r", | or ", listed.group(1))) == URGENT


def test_one_format_for_pydantic_errors():
    """Every command and the feedback API word a pydantic error the same way (chexops.core.errors)."""
    import pytest
    from pydantic import BaseModel, ValidationError, field_validator

    from chexops.core.errors import ConfigError, validation_problems

    class Inner(BaseModel):
        n: int

    class Outer(BaseModel):
        inner: Inner
        name: str

        @field_validator("name")
        @classmethod
        def _named(cls, value: str) -> str:  # noqa: ARG003 - a validator's signature
            raise ValueError("no names today")

    with pytest.raises(ValidationError) as caught:
        Outer.model_validate({"inner": {"n": "x"}, "name": "a"})
    assert validation_problems(caught.value) == (
        "inner.n: Input should be a valid integer, unable to parse string as an integer; name: no names today"
    )
    with pytest.raises(ValidationError) as caught:
        Outer.model_validate([])
    assert validation_problems(caught.value, top="body") == (
        "body: Input should be a valid dictionary or instance of Outer"
    )
    expected = r"^invalid gate limits: max_slice_gap: Input should be less than or equal to 1\.$"
    with pytest.raises(ConfigError, match=expected):
        load_gate_config(None, {"max_slice_gap": 2})
