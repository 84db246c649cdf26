"""The small part of Argo Rollouts' condition language (expr-lang) that our AnalysisTemplate uses,
evaluated as the analysis controller does: `result` is the Prometheus vector's values (floats).

Supported: numbers, `result`, `result[i]`, `len(result)`, `isNaN(x)`, `!x`, `&&` and `||` (short-circuit,
so `len(result) > 0 && result[0] < 1` is safe on an empty result), comparisons (< <= > >= == !=),
parentheses. Anything else raises `UnsupportedExpression` naming it.
"""

from __future__ import annotations

import math
import re

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<op>&&|\|\||<=|>=|==|!=|[<>!()\[\]])|(?P<name>[A-Za-z_]\w*))")


class UnsupportedExpression(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise UnsupportedExpression(f"cannot read {text[pos:]!r} in {text!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def evaluate(condition: str, result: list[float] | float) -> bool:
    tokens, pos = _tokens(condition), 0

    def peek():
        return tokens[pos] if pos < len(tokens) else (None, None)

    def take(value: str | None = None):
        nonlocal pos
        tok = peek()
        if tok[0] is None or (value is not None and tok[1] != value):
            raise UnsupportedExpression(f"expected {value or 'more'} at token {pos} of {condition!r}")
        pos += 1
        return tok

    # Each parser returns a thunk, so that && and || short-circuit like expr-lang.
    def chain(operator: str, operand, combine):
        """operand (operator operand)*, folded left with `combine(a_thunk, b_thunk)`."""
        def parse():
            left = operand()
            while peek()[1] == operator:
                take()
                left = (lambda a, b: lambda: combine(a, b))(left, operand())
            return left
        return parse

    def or_():
        return chain("||", and_, lambda a, b: bool(a()) or bool(b()))()

    def and_():
        return chain("&&", unary, lambda a, b: bool(a()) and bool(b()))()

    def unary():
        if peek()[1] == "!":
            take()
            inner = unary()
            return lambda: not inner()
        return comparison()

    ops = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
           "==": lambda a, b: a == b, "!=": lambda a, b: a != b}

    def comparison():
        left = atom()
        if peek()[1] in ops:
            op = ops[take()[1]]
            right = atom()
            return (lambda a, b, f: lambda: f(a(), b()))(left, right, op)
        return left

    def atom():
        kind, value = take()
        if kind == "num":
            number = float(value)
            return lambda: number
        if value == "(":
            inner = or_()
            take(")")
            return inner
        if value == "result":
            if peek()[1] == "[":
                take("[")
                index = int(take()[1])
                take("]")
                return lambda: _index(result, index)
            return lambda: result
        if value == "len":
            take("(")
            inner = or_()
            take(")")
            return lambda: len(inner())
        if value == "isNaN":
            take("(")
            inner = or_()
            take(")")
            return lambda: math.isnan(inner())
        raise UnsupportedExpression(f"{value!r} is not supported (in {condition!r})")

    tree = or_()
    if pos != len(tokens):
        raise UnsupportedExpression(f"unexpected {tokens[pos][1]!r} in {condition!r}")
    return bool(tree())


def _index(result, index: int) -> float:
    if not isinstance(result, list):
        raise UnsupportedExpression("result is a scalar, not a vector")
    if index >= len(result):
        raise IndexError(f"result[{index}] of a {len(result)}-element result (an Error measurement in Argo Rollouts)")
    return result[index]
