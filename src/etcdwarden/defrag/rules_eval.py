"""The ``--rule`` expression tree and its evaluation (the parser is :mod:`etcdwarden.defrag.rules`).

Arithmetic follows goval (Go) where that is well defined: integer op integer stays an integer
(``24/10 == 2``, truncated toward zero; ``%`` takes the sign of the dividend), anything with a float is a
float. Where Go would wrap around or produce ±Inf/NaN, evaluation stops with a :class:`RuleEvalError`
instead: a division or modulo by zero, an integer outside the 64-bit range, a float overflow, or a
result that is not a number. The parser evaluates every constant part once, so for a rule these errors
can only come from a member's own figures (e.g. ``dbSize / dbSizeFree`` on a member with no free
space), and they are reported for that member, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from etcdwarden.errors import EtcdwardenError

Value = int | float | bool
INT_LIMIT = 2**63 - 1  # goval's int is a Go int64; larger integers are refused, not wrapped


class RuleEvalError(EtcdwardenError):
    """The rule cannot be evaluated with these figures (e.g. a division by a figure that is 0)."""

    def __init__(self, reason: str, pos: int | None = None) -> None:
        super().__init__(f"--rule at column {pos + 1}: {reason}" if pos is not None else reason)
        self.reason = reason
        self.pos = pos


class Type(Enum):
    NUMBER = "number"
    BOOL = "bool"


@dataclass(frozen=True)
class Node:
    """A node of the expression tree. ``op`` is the operator, ``'num'``, ``'bool'`` or ``'var'``;
    ``depth`` is the height of the subtree (bounded by the parser, so evaluation cannot recurse deeply)."""

    op: str
    type: Type
    args: tuple[Node, ...] = ()
    value: Value | None = None
    name: str = ""
    pos: int = 0
    depth: int = 1

    @property
    def is_constant(self) -> bool:
        return self.op in ("num", "bool")


def _int_div(a: int, b: int, pos: int) -> int:
    if b == 0:
        raise RuleEvalError("division by zero", pos)
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _int_arith(op: str, a: int, b: int, pos: int) -> int:
    if op == "+":
        r = a + b
    elif op == "-":
        r = a - b
    elif op == "*":
        r = a * b
    elif op == "/":
        r = _int_div(a, b, pos)
    else:
        if b == 0:
            raise RuleEvalError("modulo by zero", pos)
        r = a - b * _int_div(a, b, pos)
    if abs(r) > INT_LIMIT:
        raise RuleEvalError(f"integer overflow: the result of {op!r} does not fit in 64 bits", pos)
    return r


def _float_arith(op: str, x: float, y: float, pos: int) -> float:
    if op in ("/", "%") and y == 0:
        raise RuleEvalError("division by zero" if op == "/" else "modulo by zero", pos)
    if op == "+":
        r = x + y
    elif op == "-":
        r = x - y
    elif op == "*":
        r = x * y
    elif op == "/":
        r = x / y
    else:
        r = math.nan if math.isinf(x) else math.fmod(x, y)
    if math.isnan(r):
        raise RuleEvalError(f"the result of {op!r} is not a number", pos)
    if math.isinf(r) and math.isfinite(x) and math.isfinite(y):
        raise RuleEvalError(f"the result of {op!r} is too large (float overflow)", pos)
    return r


def arith(op: str, a: Value, b: Value, pos: int = 0) -> int | float:
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool) and not isinstance(b, bool):
        return _int_arith(op, a, b, pos)
    return _float_arith(op, float(a), float(b), pos)


def _compare(op: str, a: Value, b: Value) -> bool:
    x: int | float = a if isinstance(a, int) and isinstance(b, int) else float(a)
    y: int | float = b if isinstance(a, int) and isinstance(b, int) else float(b)
    if op == "<":
        return x < y
    if op == "<=":
        return x <= y
    if op == ">":
        return x > y
    return x >= y


def evaluate(node: Node, env: Mapping[str, float]) -> Value:
    """The value of ``node`` with the variables of ``env``. Raises :class:`RuleEvalError`."""
    op = node.op
    if op in ("num", "bool"):
        assert node.value is not None
        return node.value
    if op == "var":
        if node.name not in env:
            raise RuleEvalError(f"{node.name} is not known for this member", node.pos)
        return float(env[node.name])
    if op == "neg":
        v = evaluate(node.args[0], env)
        assert not isinstance(v, bool)
        return -v
    if op == "not":
        return not evaluate(node.args[0], env)
    if op == "&&":
        return bool(evaluate(node.args[0], env)) and bool(evaluate(node.args[1], env))
    if op == "||":
        return bool(evaluate(node.args[0], env)) or bool(evaluate(node.args[1], env))
    a = evaluate(node.args[0], env)
    b = evaluate(node.args[1], env)
    if op in ("==", "!="):
        if isinstance(a, bool) or isinstance(b, bool):
            equal = a is b
        else:
            equal = (a == b) if isinstance(a, int) and isinstance(b, int) else float(a) == float(b)
        return equal if op == "==" else not equal
    if op in ("<", "<=", ">", ">="):
        return _compare(op, a, b)
    return arith(op, a, b, node.pos)
