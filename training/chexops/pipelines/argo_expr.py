"""Argo's condition expressions, parsed and walked (never `eval`): one grammar, three kinds of operand.

    or         := and ('||' and)*
    and        := unary ('&&' unary)*
    unary      := '!' unary | comparison
    comparison := operand [('<' | '<=' | '>' | '>=' | '==' | '!=') operand]
    operand    := '(' or ')' | a dialect's operand

- `depends` (Argo Workflows' enhanced depends): TASK or TASK.RESULT; no comparisons. A bare TASK means
  Succeeded, Skipped or Daemoned.
- `when` (Argo Workflows, after `{{...}}` substitution): numbers, 'quoted' or bare words; every operand is
  compared (as numbers when both are, else as text).
- analysis conditions (Argo Rollouts' expr-lang): numbers, `result` (the Prometheus vector's values),
  `result[i]`, `len(x)`, `isNaN(x)`.

`&&` and `||` short-circuit, as in Argo (so `len(result) > 0 && result[0] < 1` is safe on an empty
result). Anything else raises UnsupportedExpression naming it.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from chexops.core.errors import UserInputError

# Argo's node phases, as the local runner records them.
SUCCEEDED, FAILED, SKIPPED, OMITTED = "Succeeded", "Failed", "Skipped", "Omitted"
# The phases each `depends` result accepts (Errored and Daemoned never happen here).
DEPENDS_RESULTS = {
    "Succeeded": {SUCCEEDED},
    "Failed": {FAILED},
    "Errored": set(),
    "Skipped": {SKIPPED},
    "Omitted": {OMITTED},
    "Daemoned": set(),
    "AnySucceeded": {SUCCEEDED},
    "AllFailed": {FAILED},
}
BARE_TASK = {SUCCEEDED, SKIPPED}

_TOKEN = re.compile(
    r"""\s*(?:(?P<str>'[^']*'|"[^"]*")|(?P<op>&&|\|\||<=|>=|==|!=|[<>!()\[\]])"""
    r"""|(?P<word>[^\s'"&|<>=!()\[\]]+))"""
)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_TASK = re.compile(r"([A-Za-z0-9_-]+)(?:\.([A-Za-z]+))?")
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_CONDITIONS = {"or", "and", "not", "cmp"}  # the nodes whose value is a truth value

Node = tuple  # ("or" | "and", a, b), ("not", a), ("cmp", op, a, b), or a dialect's leaf


class UnsupportedExpression(UserInputError):
    """The expression uses something this parser does not implement, or cannot be read."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise UnsupportedExpression(f"cannot read {text[pos:].strip()!r} in {text!r}")
        out.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over the shared grammar; `operand` reads a dialect's operand, `compared` says
    whether comparisons are "optional", "required" of every operand, or "refused"."""

    def __init__(self, text: str, operand: Callable[[_Parser], Node], compared: str):
        self.text, self.tokens, self.pos = text, _tokens(text), 0
        self.operand, self.compared = operand, compared

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens) or (value is not None and self.peek() != value):
            found = "the end" if self.pos >= len(self.tokens) else repr(self.peek())
            raise UnsupportedExpression(
                f"expected {value!r} but found {found} in {self.text!r}" if value else f"{self.text!r} ends too early"
            )
        self.pos += 1
        return self.tokens[self.pos - 1]

    def parse(self) -> Node:
        tree = self.or_()
        if self.pos != len(self.tokens):
            extra = self.peek()
            raise UnsupportedExpression(
                f"unbalanced parentheses in {self.text!r}" if extra == ")" else f"unexpected {extra!r} in {self.text!r}"
            )
        return tree

    def or_(self) -> Node:
        return self._chain("||", "or", self.and_)

    def and_(self) -> Node:
        return self._chain("&&", "and", self.unary)

    def _chain(self, token: str, kind: str, operand: Callable[[], Node]) -> Node:
        left = operand()
        while self.peek() == token:
            self.take()
            left = (kind, left, operand())
        return left

    def unary(self) -> Node:
        if self.peek() == "!":
            self.take()
            return ("not", self.unary())
        return self.comparison()

    def comparison(self) -> Node:
        left = self.primary()
        if self.peek() in _COMPARE:
            if self.compared == "refused":
                raise UnsupportedExpression(f"comparisons ({self.peek()}) are not implemented here (in {self.text!r})")
            op = self.take()[1]
            return ("cmp", op, left, self.primary())
        if self.compared == "required" and left[0] not in _CONDITIONS:
            raise UnsupportedExpression(f"{left[1]!r} is not a comparison")
        return left

    def primary(self) -> Node:
        if self.peek() == "(":
            self.take()
            inner = self.or_()
            if self.peek() != ")":
                raise UnsupportedExpression(f"unbalanced parentheses in {self.text!r}")
            self.take()
            return inner
        return self.operand(self)


def _evaluate(node: Node, leaf: Callable[[Node], Any], compare: Callable[[str, Any, Any], bool]) -> Any:
    """The value of `node`; `leaf` gives a dialect's operands theirs, `compare` applies a comparison."""
    kind = node[0]
    if kind == "or":
        return bool(_evaluate(node[1], leaf, compare)) or bool(_evaluate(node[2], leaf, compare))
    if kind == "and":
        return bool(_evaluate(node[1], leaf, compare)) and bool(_evaluate(node[2], leaf, compare))
    if kind == "not":
        return not _evaluate(node[1], leaf, compare)
    if kind == "cmp":
        return compare(node[1], _evaluate(node[2], leaf, compare), _evaluate(node[3], leaf, compare))
    return leaf(node)


def _compare(op: str, left: Any, right: Any) -> bool:
    return _COMPARE[op](left, right)


# --------------------------------------------------------------------------------------------- depends


def _task(parser: _Parser) -> Node:
    kind, text = parser.take()
    m = _TASK.fullmatch(text)
    if kind != "word" or not m:
        raise UnsupportedExpression(f"cannot read {text!r} in {parser.text!r}")
    task, result = m.groups()
    if result is not None and result not in DEPENDS_RESULTS:
        raise UnsupportedExpression(f"result {text!r} is not implemented locally (known: {', '.join(DEPENDS_RESULTS)})")
    return ("task", task, result)


def _depends_tree(expr: str) -> Node | None:
    return _Parser(expr, _task, "refused").parse() if expr.strip() else None


def _leaves(node: Node) -> list[Node]:
    if node[0] in ("or", "and"):
        return _leaves(node[1]) + _leaves(node[2])
    return _leaves(node[1]) if node[0] == "not" else [node]


def depends_tasks(expr: str) -> list[str]:
    """The tasks a `depends` expression names, in order (none for an empty one)."""
    tree = _depends_tree(expr)
    return list(dict.fromkeys(leaf[1] for leaf in _leaves(tree))) if tree else []


def evaluate_depends(expr: str, phases: Mapping[str, str]) -> bool:
    """Whether `depends` holds for the tasks' `phases` (every task it names must have one)."""
    tree = _depends_tree(expr)

    def leaf(node: Node) -> bool:
        _, task, result = node
        return phases[task] in (DEPENDS_RESULTS[result] if result else BARE_TASK)

    return tree is None or bool(_evaluate(tree, leaf, _compare))


# --------------------------------------------------------------------------------------------- when


def _literal(parser: _Parser) -> Node:
    """("literal", text, number): `number` for unquoted text that reads as one, else None."""
    kind, text = parser.take()
    if kind == "str":
        return ("literal", text[1:-1], None)
    if kind != "word":
        raise UnsupportedExpression(f"unexpected {text!r} in {parser.text!r}")
    try:
        return ("literal", text, float(text))
    except ValueError:
        return ("literal", text, None)


def _compare_literals(op: str, left: Any, right: Any) -> bool:
    if not (isinstance(left, tuple) and isinstance(right, tuple)):
        raise UnsupportedExpression("a condition is compared with a value")
    (_, left_text, left_number), (_, right_text, right_number) = left, right
    if left_number is not None and right_number is not None:
        return _COMPARE[op](left_number, right_number)
    return _COMPARE[op](left_text, right_text)


def evaluate_when(expr: str) -> bool:
    """An Argo `when` after substitution: comparisons (numbers when both sides are, else text) joined by
    && || ! and parentheses."""
    tree = _Parser(expr, _literal, "required").parse()
    return bool(_evaluate(tree, lambda node: node, _compare_literals))


# --------------------------------------------------------------------------------------------- analysis


def _analysis_operand(parser: _Parser) -> Node:
    kind, value = parser.take()
    if kind == "word" and _NUMBER.fullmatch(value):
        return ("num", float(value))
    if value == "result":
        if parser.peek() != "[":
            return ("result",)
        parser.take("[")
        index = parser.take()[1]
        if not index.isdigit():
            raise UnsupportedExpression(f"result[{index}]: only result[<number>] is supported (in {parser.text!r})")
        parser.take("]")
        return ("index", int(index))
    if value in ("len", "isNaN"):
        parser.take("(")
        inner = parser.or_()
        parser.take(")")
        return (value, inner)
    raise UnsupportedExpression(f"{value!r} is not supported (in {parser.text!r})")


def _index(result: list[float] | float, index: int) -> float:
    if not isinstance(result, list):
        raise UnsupportedExpression("result is a scalar, not a vector")
    if index >= len(result):
        raise IndexError(f"result[{index}] of a {len(result)}-element result (an Error measurement in Argo Rollouts)")
    return result[index]


def evaluate_analysis(condition: str, result: list[float] | float) -> bool:
    """An Argo Rollouts success or failure condition, as the analysis controller evaluates it on `result`."""
    tree = _Parser(condition, _analysis_operand, "optional").parse()

    def leaf(node: Node) -> Any:
        kind = node[0]
        if kind == "num":
            return node[1]
        if kind == "result":
            return result
        if kind == "index":
            return _index(result, node[1])
        inner = _evaluate(node[1], leaf, _compare)
        return len(inner) if kind == "len" else math.isnan(inner)

    return bool(_evaluate(tree, leaf, _compare))
