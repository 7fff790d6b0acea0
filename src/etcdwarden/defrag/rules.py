"""The ``--rule`` expression language: decide per member whether to defragment it.

A small, safe language (no ``eval``): a tokenizer, a Pratt parser that builds a typed tree, and an
evaluator. It is compatible with the rules etcd-defrag accepts (goval expressions over the same
variables) for everything those rules use:

* numbers: ``42``, ``0x2A``, ``2.5``, ``.5``, ``1e6``, and a size suffix on a literal: ``100MiB``,
  ``2GiB``, ``500MB`` (``B kB KB MB GB TB`` are powers of 1000, ``KiB MiB GiB TiB`` powers of 1024);
* ``true``, ``false``;
* arithmetic ``+ - * / %`` and unary ``-``; comparisons ``== != < <= > >=``; logic ``&& || !``;
  parentheses; C precedence, left associative.

Integer and float arithmetic follow goval (Go): integer op integer stays an integer (``24/10 == 2``,
truncated toward zero; ``%`` takes the sign of the dividend), anything with a float is a float;
float division by zero gives ±Inf/NaN, integer division by zero is an evaluation error.

Variables are the member's figures and are floats (as in etcd-defrag, so ``dbSizeFree / dbSize`` is a
ratio, not 0): ``dbSize``, ``dbSizeInUse``, ``dbSizeFree``, ``dbQuota``, ``dbQuotaUsage`` and
``fragmentation`` (``dbSizeFree / dbSize``, 0..1).

Types are checked when the rule is compiled: an unknown variable, ``dbSize && 1`` or a rule that is not
a boolean is a :class:`RuleSyntaxError` (a usage error, exit 2) before anything touches the cluster.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from etcdwarden.errors import EtcdwardenError, UsageError

VARIABLES: dict[str, str] = {
    "dbSize": "physically allocated size of the member's database file (bytes)",
    "dbSizeInUse": "bytes of the database in use (dbSize minus free pages)",
    "dbSizeFree": "dbSize - dbSizeInUse (bytes a defragmentation can give back)",
    "dbQuota": "the member's backend quota (etcd >= 3.6 reports it; else its local command line or manifest, "
               "or --quota-backend-bytes)",
    "dbQuotaUsage": "dbSize / dbQuota (0..1; the NOSPACE alarm fires near 1)",
    "fragmentation": "dbSizeFree / dbSize (0..1)",
}

QUOTA_VARIABLES = frozenset({"dbQuota", "dbQuotaUsage"})  # need the member's quota to be known

# The statement of OpenShift's controller rule: at least 45 % of the file is free pages and
# at least 100 MiB is free. (The controller's source checks dbSize >= 100 MiB instead; requiring
# 100 MiB *free* defragments less often, which is the safer of the two, so we keep the rule.)
AUTO_RULE = "fragmentation >= 0.45 && dbSizeFree >= 100MiB"

SIZE_SUFFIXES: dict[str, int] = {
    "B": 1,
    "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
}

Value = int | float | bool


class RuleSyntaxError(UsageError):
    """The rule does not parse or does not type-check (exit 2)."""

    def __init__(self, message: str, text: str = "", pos: int | None = None) -> None:
        if pos is not None and text:
            message = f"{message}\n  {text}\n  {' ' * pos}^"
        super().__init__(f"invalid --rule: {message}")
        self.pos = pos


class RuleEvalError(EtcdwardenError):
    """The rule failed while being evaluated for a member (e.g. integer division by zero)."""


# -- tokens --------------------------------------------------------------------------------------


class Tok(Enum):
    NUM = "number"
    IDENT = "name"
    OP = "operator"
    LPAREN = "'('"
    RPAREN = "')'"
    END = "end of rule"


@dataclass(frozen=True)
class Token:
    kind: Tok
    text: str
    pos: int
    value: int | float | None = None


_OPERATORS = ("&&", "||", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "!")
_NUMBER_RE = re.compile(
    r"0[xX][0-9a-fA-F]+"
    r"|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?"
)
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _number(text: str, src: str, pos: int) -> int | float:
    if text[:2] in ("0x", "0X"):
        return int(text, 16)
    if any(c in text for c in ".eE"):
        return float(text)
    if len(text) > 1 and text[0] == "0":
        raise RuleSyntaxError(f"number {text!r} has a leading zero (octal is not supported)", src, pos)
    return int(text)


def tokenize(src: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
            continue
        if c.isdigit() or (c == "." and i + 1 < n and src[i + 1].isdigit()):
            m = _NUMBER_RE.match(src, i)
            assert m is not None
            text = m.group(0)
            value = _number(text, src, i)
            end = m.end()
            suffix = _IDENT_RE.match(src, end)
            if suffix is not None:
                name = suffix.group(0)
                if name not in SIZE_SUFFIXES:
                    raise RuleSyntaxError(
                        f"unknown size suffix {name!r} (use one of {', '.join(SIZE_SUFFIXES)})", src, end
                    )
                scaled = value * SIZE_SUFFIXES[name]
                value = int(scaled) if float(scaled).is_integer() else scaled
                end = suffix.end()
            tokens.append(Token(Tok.NUM, src[i:end], i, value))
            i = end
            continue
        if c.isalpha() or c == "_":
            m = _IDENT_RE.match(src, i)
            assert m is not None
            tokens.append(Token(Tok.IDENT, m.group(0), i))
            i = m.end()
            continue
        if c == "(":
            tokens.append(Token(Tok.LPAREN, c, i))
            i += 1
            continue
        if c == ")":
            tokens.append(Token(Tok.RPAREN, c, i))
            i += 1
            continue
        for op in _OPERATORS:
            if src.startswith(op, i):
                tokens.append(Token(Tok.OP, op, i))
                i += len(op)
                break
        else:
            hint = " (use && and ||)" if c in "&|" else ""
            raise RuleSyntaxError(f"unexpected character {c!r}{hint}", src, i)
    tokens.append(Token(Tok.END, "", n))
    return tokens


# -- tree ----------------------------------------------------------------------------------------


class Type(Enum):
    NUMBER = "number"
    BOOL = "bool"


@dataclass(frozen=True)
class Node:
    """A node of the expression tree. ``op`` is the operator, ``'num'``, ``'bool'`` or ``'var'``."""

    op: str
    type: Type
    args: tuple[Node, ...] = ()
    value: Value | None = None
    name: str = ""
    pos: int = 0


# binding powers (C precedence, higher binds tighter)
_BINARY: dict[str, int] = {
    "||": 10, "&&": 20,
    "==": 30, "!=": 30,
    "<": 40, "<=": 40, ">": 40, ">=": 40,
    "+": 50, "-": 50,
    "*": 60, "/": 60, "%": 60,
}
_UNARY_POWER = 70


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.tokens = tokenize(src)
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def error(self, message: str, pos: int) -> RuleSyntaxError:
        return RuleSyntaxError(message, self.src, pos)

    def parse(self) -> Node:
        if self.peek().kind is Tok.END:
            raise self.error("the rule is empty", 0)
        node = self.expression(0)
        t = self.peek()
        if t.kind is not Tok.END:
            raise self.error(f"unexpected {t.text!r} after a complete expression", t.pos)
        return node

    def expression(self, min_power: int) -> Node:
        left = self.prefix()
        while True:
            t = self.peek()
            if t.kind is not Tok.OP or t.text not in _BINARY:
                break
            power = _BINARY[t.text]
            if power <= min_power:
                break
            self.next()
            right = self.expression(power)
            left = self.binary(t, left, right)
        return left

    def prefix(self) -> Node:
        t = self.next()
        if t.kind is Tok.NUM:
            assert t.value is not None
            return Node("num", Type.NUMBER, value=t.value, pos=t.pos)
        if t.kind is Tok.IDENT:
            if t.text in ("true", "false"):
                return Node("bool", Type.BOOL, value=t.text == "true", pos=t.pos)
            if t.text not in VARIABLES:
                similar = difflib.get_close_matches(t.text, list(VARIABLES), n=1)
                hint = f"; did you mean {similar[0]!r}?" if similar else ""
                raise self.error(
                    f"unknown variable {t.text!r}{hint} (known: {', '.join(VARIABLES)})", t.pos
                )
            return Node("var", Type.NUMBER, name=t.text, pos=t.pos)
        if t.kind is Tok.LPAREN:
            inner = self.expression(0)
            close = self.next()
            if close.kind is not Tok.RPAREN:
                raise self.error(f"expected ')' to close the '(' at column {t.pos + 1}", close.pos)
            return inner
        if t.kind is Tok.OP and t.text in ("-", "!", "+"):
            operand = self.expression(_UNARY_POWER)
            want = Type.BOOL if t.text == "!" else Type.NUMBER
            if operand.type is not want:
                raise self.error(f"type error: {t.text!r} needs a {want.value}, got a {operand.type.value}", t.pos)
            if t.text == "+":
                return operand
            return Node("neg" if t.text == "-" else "not", want, (operand,), pos=t.pos)
        what = "the end of the rule" if t.kind is Tok.END else repr(t.text)
        raise self.error(f"expected a number, a variable or '(' but found {what}", t.pos)

    def binary(self, t: Token, left: Node, right: Node) -> Node:
        op = t.text
        if op in ("&&", "||"):
            want, result = Type.BOOL, Type.BOOL
        elif op in ("==", "!="):
            if left.type is not right.type:
                raise self.error(
                    f"type error: cannot compare a {left.type.value} with a {right.type.value} using {op!r}", t.pos
                )
            return Node(op, Type.BOOL, (left, right), pos=t.pos)
        elif op in ("<", "<=", ">", ">="):
            want, result = Type.NUMBER, Type.BOOL
        else:
            want, result = Type.NUMBER, Type.NUMBER
        for side in (left, right):
            if side.type is not want:
                raise self.error(
                    f"type error: {op!r} needs {want.value}s on both sides, got a {side.type.value}", t.pos
                )
        return Node(op, result, (left, right), pos=t.pos)


# -- evaluation ----------------------------------------------------------------------------------


def _int_div(a: int, b: int) -> int:
    if b == 0:
        raise RuleEvalError("integer division by zero in --rule")
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _float_div(a: float, b: float) -> float:
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _arith(op: str, a: Value, b: Value) -> int | float:
    if isinstance(a, int) and isinstance(b, int):
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return _int_div(a, b)
        if b == 0:
            raise RuleEvalError("integer modulo by zero in --rule")
        return a - b * _int_div(a, b)
    x, y = float(a), float(b)
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "/":
        return _float_div(x, y)
    return math.nan if y == 0 or math.isinf(x) else math.fmod(x, y)


def _compare(op: str, a: Value, b: Value) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        x: int | float = a
        y: int | float = b
    else:
        x, y = float(a), float(b)
    if op == "<":
        return x < y
    if op == "<=":
        return x <= y
    if op == ">":
        return x > y
    return x >= y


def evaluate(node: Node, env: Mapping[str, float]) -> Value:
    op = node.op
    if op in ("num", "bool"):
        assert node.value is not None
        return node.value
    if op == "var":
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
    return _arith(op, a, b)


@dataclass(frozen=True)
class Rule:
    """A compiled rule. ``matches(env)`` is its verdict for one member's figures."""

    text: str
    tree: Node

    @property
    def variables(self) -> frozenset[str]:
        """The variables the rule uses."""
        found: set[str] = set()
        todo = [self.tree]
        while todo:
            n = todo.pop()
            if n.op == "var":
                found.add(n.name)
            todo.extend(n.args)
        return frozenset(found)

    def value(self, env: Mapping[str, float]) -> Value:
        missing = sorted(self.variables - set(env))
        if missing:
            raise RuleEvalError(f"--rule evaluated without {', '.join(missing)}")
        return evaluate(self.tree, env)

    def matches(self, env: Mapping[str, float]) -> bool:
        v = self.value(env)
        assert isinstance(v, bool)
        return v


def parse_expression(text: str) -> Node:
    """Parse and type-check an expression of any type (numbers included); for tests and tools."""
    return _Parser(text).parse()


def _fold_check(node: Node, text: str) -> bool:
    """True if ``node`` has no variable; raise for a constant part that cannot be evaluated (``1/0``)."""
    constant = all([_fold_check(a, text) for a in node.args]) and node.op != "var"
    if constant and node.args:
        try:
            evaluate(node, {})
        except RuleEvalError as e:
            raise RuleSyntaxError(str(e), text, node.pos) from None
    return constant


def compile_rule(text: str) -> Rule:
    """Parse a rule; it must be a boolean. Raises :class:`RuleSyntaxError`."""
    tree = parse_expression(text)
    _fold_check(tree, text)
    if tree.type is not Type.BOOL:
        raise RuleSyntaxError(
            f"the rule must be true or false (a comparison such as 'dbSizeFree > 100MiB'), "
            f"but {text.strip()!r} is a {tree.type.value}"
        )
    return Rule(text, tree)


def rule_variables(db_size: int, db_size_in_use: int, db_quota: int | None) -> dict[str, float]:
    """The variables of one member. ``db_quota`` ≤ 0 means no quota (``dbQuota`` infinite, usage 0);
    None means the quota is unknown: ``dbQuota`` and ``dbQuotaUsage`` are left out (a rule using them
    fails for that member rather than guess)."""
    size = float(db_size)
    in_use = float(db_size_in_use)
    free = max(0.0, size - in_use)
    env = {
        "dbSize": size,
        "dbSizeInUse": in_use,
        "dbSizeFree": free,
        "fragmentation": free / size if size > 0 else 0.0,
    }
    if db_quota is not None:
        quota = float(db_quota) if db_quota > 0 else math.inf
        env["dbQuota"] = quota
        env["dbQuotaUsage"] = size / quota if quota != math.inf else 0.0
    return env


def parse_size(text: str) -> int:
    """``2147483648``, ``2GiB``, ``16MiB``, ``500MB`` → bytes. Raises :class:`UsageError`."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or (m.group(2) and m.group(2) not in SIZE_SUFFIXES):
        raise UsageError(f"invalid size {text!r}; use bytes or e.g. 16MiB, 2GiB, 500MB")
    n = float(m.group(1)) * SIZE_SUFFIXES.get(m.group(2) or "B", 1)
    if not n < 2**63:
        raise UsageError(f"invalid size {text.strip()[:40]!r}: too large")
    return int(n)
