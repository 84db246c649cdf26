"""Typed step results (`chexops.core.results.Result`) print the JSON the dicts they replace printed."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from chexops.core.console import as_dict, write_outputs
from chexops.core.results import Result


class Inner(Result):
    n: int
    share: float | None


class Step(Result):
    omit_unset = frozenset({"recorded", "inner"})

    passed: bool
    count: int
    ratio: float
    open_ended: dict[str, object]
    previous: str | None
    inner: Inner | None = None
    recorded: str | None = None


def test_fields_in_declaration_order_and_unset_optional_ones_left_out():
    step = Step(passed=True, count=3, ratio=0.5, open_ended={"b": 1, "a": [1, 2]}, previous=None)
    assert json.dumps(as_dict(step)) == (
        '{"passed": true, "count": 3, "ratio": 0.5, "open_ended": {"b": 1, "a": [1, 2]}, "previous": null}'
    )
    step.recorded = "models:/m/1"
    step.inner = Inner(n=2, share=None)
    assert list(as_dict(step)) == ["passed", "count", "ratio", "open_ended", "previous", "inner", "recorded"]
    assert as_dict(step)["inner"] == {"n": 2, "share": None}


def test_an_optional_field_set_to_none_is_printed_as_null():
    step = Step(passed=False, count=0, ratio=1.0, open_ended={}, previous="2", recorded=None)
    assert "recorded" in as_dict(step) and as_dict(step)["recorded"] is None


def test_nan_and_infinities_stay_numbers_nested_or_not():
    step = Step(
        passed=True, count=1, ratio=math.inf, open_ended={"auroc": math.nan, "deep": [{"x": -math.inf}]}, previous=None
    )
    printed = json.dumps(as_dict(step))
    assert '"ratio": Infinity' in printed and '"auroc": NaN' in printed and '"x": -Infinity' in printed


def test_ints_stay_ints_and_scalars_become_output_files(tmp_path):
    step = Step(passed=True, count=7, ratio=2, open_ended={"k": 1}, previous=None, inner=Inner(n=4, share=0.25))
    out = write_outputs(as_dict(step), tmp_path)
    assert (out / "count").read_text() == "7" and (out / "inner.n").read_text() == "4"
    assert (out / "passed").read_text() == "true" and (out / "ratio").read_text() == "2.0"


def test_unknown_fields_and_wrong_types_are_refused_also_on_assignment():
    with pytest.raises(ValidationError):
        Step(passed=True, count=1, ratio=0.0, open_ended={}, previous=None, extra=1)
    step = Step(passed=True, count=1, ratio=0.0, open_ended={}, previous=None)
    with pytest.raises(ValidationError):
        step.count = "many"
