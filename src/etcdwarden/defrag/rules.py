"""The ``--rule`` expression language: decide per member whether to defragment it.

A small, safe language (no ``eval``): a tokenizer, a Pratt parser that builds a typed tree, and an
evaluator (:mod:`.rules_eval`). It is compatible with the rules etcd-defrag accepts (goval expressions
over the same variables) for everything those rules use:

* numbers: ``42``, ``0x2A``, ``2.5``, ``.5``, ``1e6``, and a size suffix on a literal: ``100MiB``,
  ``2GiB``, ``500MB`` (``B kB KB MB GB TB`` are powers of 1000, ``KiB MiB GiB TiB`` powers of 1024);
* ``true``, ``false``;
* arithmetic ``+ - * / %`` and unary ``-``; comparisons ``== != < <= > >=``; logic ``&& || !``;
  parentheses; C precedence, left associative.

Integer op integer stays an integer (``24/10 == 2``), anything with a float is a float (see
:mod:`.rules_eval`). Variables are the member's figures and are floats (as in etcd-defrag, so
``dbSizeFree / dbSize`` is a ratio, not 0): ``dbSize``, ``dbSizeInUse``, ``dbSizeFree``, ``dbQuota``,
``dbQuotaUsage`` and ``fragmentation`` (``dbSizeFree / dbSize``, 0..1).

Everything that can be found before touching the cluster is a :class:`RuleSyntaxError` (a usage error,
exit 2, with a caret under the column): a rule longer than :data:`MAX_RULE_LENGTH` characters or nested
deeper than :data:`MAX_DEPTH`; a number that is not finite or does not fit in 64 bits; an unknown
variable, ``dbSize && 1`` or a rule that is not a boolean; every constant part is computed once, so a
division by zero (``x / 0``, ``x / (2 - 2)``) or an overflow there is refused too; and the whole rule
is evaluated once on sample figures. What is left, a division by a member's figure that is 0 there,
is a :class:`RuleEvalError` for that member.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from etcdwarden.defrag.rules_eval import INT_LIMIT, Node, RuleEvalError, Type, Value, evaluate
from etcdwarden.errors import UsageError, setting

__all__ = [
    "AUTO_RULE", "MAX_DEPTH", "MAX_RULE_LENGTH", "QUOTA_VARIABLES", "SIZE_SUFFIXES", "VARIABLES", "Node", "Rule",
    "RuleEvalError", "RuleSyntaxError", "Type", "Value", "compile_rule", "evaluate", "parse_expression",
    "rule_variables", "tokenize",
]

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

MAX_RULE_LENGTH = 1000  # characters
MAX_DEPTH = 40  # nesting of parentheses and operators (the height of the expression tree)
MAX_NUMBER_LENGTH = 40  # characters of one number
# etcd-defrag checks a rule against these figures before it starts; so do we
SAMPLE_FIGURES = (100 * 1024**2, 60 * 1024**2, 2 * 1024**3)  # dbSize, dbSizeInUse, dbQuota


def caret(text: str, pos: int, width: int = 60) -> str:
    """Two lines: (a window of) ``text`` and a caret under column ``pos``. Characters that are not
    printable ASCII are shown as ``?`` so the caret stays under the right one."""
    pos = max(0, min(pos, len(text)))
    start = max(0, min(pos - width // 2, len(text) - width))
    end = min(len(text), start + width)
    left = "..." if start > 0 else ""
    right = "..." if end < len(text) else ""
    shown = "".join(c if " " <= c <= "~" else "?" for c in text[start:end])
    return f"  {left}{shown}{right}\n  {' ' * (len(left) + pos - start)}^"


def _short(text: str, limit: int = 24) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class RuleSyntaxError(UsageError):
    """The rule is refused before anything touches the cluster (exit 2); the message points at the column."""

    def __init__(self, message: str, text: str, pos: int) -> None:
        super().__init__(f"invalid {setting('rule')}: {message} (column {pos + 1})\n{caret(text, pos)}")
        self.reason = message
        self.pos = pos


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
_NUMBER_RE = re.compile(r"0[xX][0-9a-fA-F]+|(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIGITS = frozenset("0123456789")
_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_SPACE = frozenset(" \t\r\n\f\v")
_HINTS = {"&": " (use && and ||)", "|": " (use && and ||)", "=": " (use == to compare)"}


def _checked(value: int | float, what: str, src: str, pos: int) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise RuleSyntaxError(f"number {_short(what)} is out of range (not a finite number)", src, pos)
    if isinstance(value, int) and abs(value) > INT_LIMIT:
        raise RuleSyntaxError(f"number {_short(what)} is out of range (integers must fit in 64 bits; "
                              f"write a float such as 1e30 for larger values)", src, pos)
    return value


def _number(text: str, src: str, pos: int) -> int | float:
    if len(text) > MAX_NUMBER_LENGTH:
        raise RuleSyntaxError(f"number {_short(text)} is too long (at most {MAX_NUMBER_LENGTH} characters)",
                              src, pos)
    if text[:2] in ("0x", "0X"):
        value: int | float = int(text, 16)
    elif any(c in text for c in ".eE"):
        value = float(text)
    elif len(text) > 1 and text[0] == "0":
        raise RuleSyntaxError(f"number {text!r} has a leading zero (octal is not supported)", src, pos)
    else:
        value = int(text)
    return _checked(value, text, src, pos)


def _scaled(value: int | float, suffix: str, text: str, src: str, pos: int) -> int | float:
    scaled = value * SIZE_SUFFIXES[suffix]
    if isinstance(scaled, float) and scaled.is_integer() and abs(scaled) <= INT_LIMIT:
        scaled = int(scaled)  # 1.5GiB is a whole number of bytes
    return _checked(scaled, text, src, pos)


def tokenize(src: str) -> list[Token]:
    """The tokens of ``src`` (ASCII only). Raises :class:`RuleSyntaxError`."""
    if len(src) > MAX_RULE_LENGTH:
        raise RuleSyntaxError(f"the rule is {len(src)} characters long; at most {MAX_RULE_LENGTH} are accepted",
                              src, MAX_RULE_LENGTH)
    tokens: list[Token] = []
    i = 0
    n = len(src)
    while i < n:
        c = src[i]
        if c in _SPACE:
            i += 1
            continue
        if c in _DIGITS or (c == "." and i + 1 < n and src[i + 1] in _DIGITS):
            m = _NUMBER_RE.match(src, i)
            if m is None:  # cannot happen: a digit, or '.' and a digit, always matches
                raise RuleSyntaxError("malformed number", src, i)
            value = _number(m.group(0), src, i)
            end = m.end()
            suffix = _IDENT_RE.match(src, end)
            if suffix is not None:
                name = suffix.group(0)
                if name not in SIZE_SUFFIXES:
                    raise RuleSyntaxError(
                        f"unknown size suffix {_short(name)} (use one of {', '.join(SIZE_SUFFIXES)})", src, end
                    )
                end = suffix.end()
                value = _scaled(value, name, src[i:end], src, i)
            tokens.append(Token(Tok.NUM, src[i:end], i, value))
            i = end
            continue
        if c in _IDENT_START:
            m = _IDENT_RE.match(src, i)
            if m is None:  # cannot happen: an identifier start always matches
                raise RuleSyntaxError("malformed name", src, i)
            tokens.append(Token(Tok.IDENT, m.group(0), i))
            i = m.end()
            continue
        if c in "()":
            tokens.append(Token(Tok.LPAREN if c == "(" else Tok.RPAREN, c, i))
            i += 1
            continue
        op = next((o for o in _OPERATORS if src.startswith(o, i)), None)
        if op is None:
            raise RuleSyntaxError(f"unexpected character {c!r}{_HINTS.get(c, '')}", src, i)
        tokens.append(Token(Tok.OP, op, i))
        i += len(op)
    tokens.append(Token(Tok.END, "", n))
    return tokens


# -- parser --------------------------------------------------------------------------------------

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
    """A Pratt parser. Every constant subtree is computed as soon as it is built (so its errors are
    syntax errors), and the nesting is bounded (so neither parsing nor evaluation recurses deeply)."""

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

    def too_deep(self, pos: int) -> RuleSyntaxError:
        return self.error(f"the rule nests too deeply (more than {MAX_DEPTH} levels of parentheses and "
                          "operators); simplify it", pos)

    def parse(self) -> Node:
        if self.peek().kind is Tok.END:
            raise self.error("the rule is empty", 0)
        node = self.expression(0, 1)
        t = self.peek()
        if t.kind is not Tok.END:
            raise self.error(f"unexpected {_short(t.text)} after a complete expression", t.pos)
        return node

    def expression(self, min_power: int, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise self.too_deep(self.peek().pos)
        left = self.prefix(depth)
        while True:
            t = self.peek()
            if t.kind is not Tok.OP or t.text not in _BINARY:
                break
            power = _BINARY[t.text]
            if power <= min_power:
                break
            self.next()
            right = self.expression(power, depth + 1)
            left = self.binary(t, left, right)
        return left

    def prefix(self, depth: int) -> Node:
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
                    f"unknown variable {_short(t.text)}{hint} (known: {', '.join(VARIABLES)})", t.pos
                )
            return Node("var", Type.NUMBER, name=t.text, pos=t.pos)
        if t.kind is Tok.LPAREN:
            inner = self.expression(0, depth + 1)
            close = self.next()
            if close.kind is not Tok.RPAREN:
                raise self.error(f"expected ')' to close the '(' at column {t.pos + 1}", close.pos)
            return inner
        if t.kind is Tok.OP and t.text in ("-", "!", "+"):
            operand = self.expression(_UNARY_POWER, depth + 1)
            want = Type.BOOL if t.text == "!" else Type.NUMBER
            if operand.type is not want:
                raise self.error(f"type error: {t.text!r} needs a {want.value}, got a {operand.type.value}", t.pos)
            if t.text == "+":
                return operand
            return self.built(Node("neg" if t.text == "-" else "not", want, (operand,), pos=t.pos,
                                   depth=operand.depth + 1))
        what = "the end of the rule" if t.kind is Tok.END else _short(t.text)
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
            want, result = left.type, Type.BOOL
        elif op in ("<", "<=", ">", ">="):
            want, result = Type.NUMBER, Type.BOOL
        else:
            want, result = Type.NUMBER, Type.NUMBER
        for side in (left, right):
            if side.type is not want:
                raise self.error(
                    f"type error: {op!r} needs {want.value}s on both sides, got a {side.type.value}", t.pos
                )
        if op in ("/", "%") and right.is_constant and right.value == 0:
            raise self.error("division by zero" if op == "/" else "modulo by zero", t.pos)
        return self.built(Node(op, result, (left, right), pos=t.pos, depth=max(left.depth, right.depth) + 1))

    def built(self, node: Node) -> Node:
        """``node``, computed now if it is constant; refused if the tree grew too deep."""
        if all(a.is_constant for a in node.args):
            try:
                value = evaluate(node, {})
            except RuleEvalError as e:
                raise self.error(e.reason, node.pos) from None
            if isinstance(value, bool):
                return Node("bool", Type.BOOL, value=value, pos=node.pos)
            return Node("num", Type.NUMBER, value=value, pos=node.pos)
        if node.depth > MAX_DEPTH:
            raise self.too_deep(node.pos)
        return node


# -- rules ---------------------------------------------------------------------------------------


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


def compile_rule(text: str) -> Rule:
    """Parse a rule; it must be a boolean, and it is evaluated once on sample figures.

    Raises :class:`RuleSyntaxError` (a :class:`UsageError`) and nothing else.
    """
    tree = parse_expression(text)
    if tree.type is not Type.BOOL:
        raise RuleSyntaxError(
            f"the rule must be true or false (a comparison such as 'dbSizeFree > 100MiB'), but this is a "
            f"{tree.type.value}", text, tree.pos
        )
    rule = Rule(text, tree)
    size, in_use, quota = SAMPLE_FIGURES
    try:
        rule.matches(rule_variables(size, in_use, quota))
    except RuleEvalError as e:
        raise RuleSyntaxError(
            f"it fails on sample figures (dbSize {size}, dbSizeInUse {in_use}, dbQuota {quota}): {e.reason}",
            text, e.pos or 0,
        ) from None
    return rule


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
