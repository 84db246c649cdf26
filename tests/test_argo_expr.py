"""Argo's condition expressions (chexops.pipelines.argo_expr): one grammar for `depends`, `when` and the
Rollouts analysis conditions; what each accepts, how it evaluates, and what it refuses by name."""

from __future__ import annotations

import math

import pytest

from chexops.pipelines.argo_expr import (
    FAILED,
    OMITTED,
    SKIPPED,
    SUCCEEDED,
    UnsupportedExpression,
    depends_tasks,
    evaluate_analysis,
    evaluate_depends,
    evaluate_when,
)


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("3 == 3", True),
        ("3 == 3.0", True),  # both numbers: compared as numbers
        ("'3' == 3.0", False),  # a quoted side is text
        ("true == true", True),
        ("false == true", False),
        ("'a b' == 'a b'", True),
        ("10 > 9", True),  # numbers, not text ('10' < '9')
        ("b > a", True),
        ("1 == 2 || 2 == 2 && 3 == 3", True),  # && binds tighter than ||
        ("(1 == 2 || 2 == 2) && 3 == 4", False),
        ("!(1 == 2)", True),
        ("1 != 2 && !(a == b)", True),
    ],
)
def test_when(expr, expected):
    assert evaluate_when(expr) is expected


@pytest.mark.parametrize(
    "expr, named",
    [
        ("3 = 3", "cannot read"),  # not an operator of the language
        ("3 == 3 & 4 == 4", "cannot read"),
        ("(3 == 3", "unbalanced parentheses"),
        ("3 == 3)", "unbalanced parentheses"),
        ("((3 == 3) && 4 == 4", "unbalanced parentheses"),
        ("true", "'true' is not a comparison"),
        ("!true", "'true' is not a comparison"),
        ("3 == 3 &&", "ends too early"),
        ("3 == 3 4", "unexpected '4'"),
        ("'open == 3", "cannot read"),
        ("(1 == 1) == 2", "a condition is compared with a value"),
        ("__import__('os') == 1", "'__import__' is not a comparison"),  # never run: nothing is eval'd
    ],
)
def test_when_refusals(expr, named):
    with pytest.raises(UnsupportedExpression, match=named):
        evaluate_when(expr)


def test_depends():
    phases = {"a": SUCCEEDED, "b": FAILED, "c": SKIPPED, "d": OMITTED}
    assert evaluate_depends("a && c", phases)  # a bare task: Succeeded or Skipped
    assert not evaluate_depends("d", phases)
    assert evaluate_depends("b.Failed && !b.Succeeded", phases)
    assert evaluate_depends("(a.Failed || b.Failed) && c.Skipped", phases)
    assert not evaluate_depends("a.Failed || b.Errored || d.Daemoned", phases)
    assert evaluate_depends("d.Omitted", phases) and evaluate_depends("", phases)
    assert depends_tasks("promote-staging.Succeeded || (b && !promote-staging.Failed)") == ["promote-staging", "b"]
    assert depends_tasks("  ") == []


@pytest.mark.parametrize(
    "expr, named",
    [
        ("a.Foo", "result 'a.Foo' is not implemented locally"),
        ("a == b", "comparisons"),
        ("(a && b", "unbalanced parentheses"),
        ("a && b)", "unbalanced parentheses"),
        ("a & b", "cannot read"),
        ("a.b.Failed", "cannot read 'a.b.Failed'"),
        ("'a'", "cannot read"),
    ],
)
def test_depends_refusals(expr, named):
    with pytest.raises(UnsupportedExpression, match=named):
        depends_tasks(expr)


def test_analysis_short_circuits_and_refuses_what_it_does_not_implement():
    condition = "len(result) > 0 && !isNaN(result[0]) && result[0] <= 0.02"
    assert [evaluate_analysis(condition, r) for r in ([], [math.nan], [0.01], [0.5])] == [False, False, True, False]
    assert evaluate_analysis("result[1] >= 3 || result[5] > 0", [0.5, 3.0])  # the right side is never read
    with pytest.raises(IndexError, match="an Error measurement"):
        evaluate_analysis("result[5] > 0", [0.5])
    for condition, named in (
        ("asInt(result[0]) > 1", "'asInt' is not supported"),
        ("result[0] + 1 > 2", "unexpected '\\+'"),
        ("(result[0] > 1", "unbalanced parentheses"),
        ("result[a] > 1", "only result\\[<number>\\]"),
        ("nan == nan", "'nan' is not supported"),
    ):
        with pytest.raises(UnsupportedExpression, match=named):
            evaluate_analysis(condition, [2.0])
