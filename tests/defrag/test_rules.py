"""The --rule language: tokens, precedence, goval-like int/float arithmetic, typing and errors."""

from __future__ import annotations

import math

import pytest

from etcdwarden.defrag.rules import (
    AUTO_RULE,
    RuleEvalError,
    RuleSyntaxError,
    Value,
    compile_rule,
    evaluate,
    parse_expression,
    rule_variables,
)
from etcdwarden.errors import EXIT_USAGE, UsageError

pytestmark = pytest.mark.unit

MiB = 1024 * 1024


def ev(text: str, **env: float) -> Value:
    return evaluate(parse_expression(text), env)


@pytest.mark.parametrize(("text", "want"), [
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("12 - 7 - 5", 0),  # left associative
    ("100 / 10 / 5", 2),
    ("2 * 3 % 4", 2),  # same level as *, left to right
    ("-2 * 3", -6),
    ("- (4 + 3)", -7),
    ("5 + -4", 1),
    ("100*1024*1024", 100 * MiB),
    ("0x1F", 31),
    ("1e3", 1000.0),
    (".5 + .25", 0.75),
])
def test_arithmetic_and_precedence(text: str, want: Value) -> None:
    got = ev(text)
    assert got == want
    assert type(got) is type(want)


@pytest.mark.parametrize(("text", "want"), [
    ("24 / 10", 2),  # int / int stays int (goval)
    ("24.0 / 10", 2.4),
    ("24 / 10.0", 2.4),
    ("-7 / 2", -3),  # truncated toward zero, as Go
    ("7 / -2", -3),
    ("-7 % 2", -1),  # sign of the dividend, as Go
    ("7 % -2", 1),
    ("4 % 3", 1),
    ("5.5 % 2", 1.5),
    ("10 % 3.5", 3.0),
])
def test_integer_versus_float_division(text: str, want: Value) -> None:
    got = ev(text)
    assert got == want
    assert type(got) is type(want)


@pytest.mark.parametrize(("text", "message"), [
    ("1 / 0", "division by zero"),
    ("1 % 0", "modulo by zero"),
    ("1 / 0.0", "division by zero"),  # goval gives +Inf: refused instead
    ("0 / 0.0", "division by zero"),  # goval gives NaN
    ("dbSize / 0", "division by zero"),  # a literal zero divisor, whatever the dividend
    ("dbSize % (2 - 2)", "modulo by zero"),  # a constant divisor that is zero
    ("1e308 * 10", "too large"),
    ("9223372036854775807 + 1", "integer overflow"),
])
def test_constant_errors_are_found_at_parse_time(text: str, message: str) -> None:
    with pytest.raises(RuleSyntaxError, match=message):
        parse_expression(text)
    # also deep inside a rule, and on a side that short-circuiting would never evaluate
    with pytest.raises(RuleSyntaxError, match=message):
        compile_rule(f"dbSize > 1 || {text} > 2")


def test_a_zero_figure_as_divisor_is_an_error_for_that_member() -> None:
    rule = compile_rule("dbSize / dbSizeFree > 2")  # fine on the sample figures
    assert rule.matches(rule_variables(100, 60, None))  # 100 / 40 > 2
    with pytest.raises(RuleEvalError) as info:
        rule.matches(rule_variables(100, 100, None))  # freshly defragmented: nothing free
    assert str(info.value) == "--rule at column 8: division by zero"
    # an infinite quota (no quota) is a figure; a result that is not a number is an error, not False
    rule = compile_rule("dbQuota - dbQuota > 0")
    with pytest.raises(RuleEvalError, match="not a number"):
        rule.matches(rule_variables(100, 40, -1))
    assert compile_rule("dbQuota > dbSize").matches(rule_variables(100, 40, -1))


def test_variables_are_floats_so_ratios_work() -> None:
    # as in etcd-defrag, the member's figures are float64: dbSizeFree / dbSize is a ratio, not 0
    assert ev("dbSizeFree / dbSize", dbSizeFree=30.0, dbSize=100.0) == 0.3


@pytest.mark.parametrize(("text", "want"), [
    ("1 < 2", True), ("2 <= 2", True), ("3 > 4", False), ("3 >= 3.0", True),
    ("1 == 1.0", True), ("1 != 2", True), ("45 > 3.4", True),
    ("true || false && false", True),  # && binds tighter than ||
    ("false && false || true", True),
    ("!true", False), ("!!true", True), ("!(1 > 2)", True),
    ("1 + 2 > 2 && 3 * 2 == 6", True),  # arithmetic binds tighter than comparison, tighter than &&
    ("true == true", True), ("true != false", True),
])
def test_logic_and_comparison(text: str, want: bool) -> None:
    assert ev(text) is want


def test_size_suffixes() -> None:
    assert ev("100MiB") == 100 * MiB
    assert ev("2GiB") == 2 * 1024**3
    assert ev("1.5GiB") == 1536 * MiB  # a whole number of bytes stays an integer
    assert ev("500MB") == 500_000_000
    assert ev("1kB + 1KiB") == 2024
    with pytest.raises(RuleSyntaxError, match="unknown size suffix 'Mb'"):
        parse_expression("5Mb > 1")


def test_short_circuit_does_not_evaluate_the_other_side() -> None:
    rule = compile_rule("dbSize == 0 || dbSizeFree / dbSize > 0.5")
    assert rule.matches(rule_variables(0, 0, None))  # 0/0.0 never computed
    rule = compile_rule("dbSizeFree > 0 && dbSize / dbSizeFree > 2")
    assert not rule.matches(rule_variables(100, 100, None))


@pytest.mark.parametrize(("text", "message"), [
    ("dbsize > 1", "unknown variable 'dbsize'; did you mean 'dbSize'?"),
    ("size > 1", "unknown variable 'size'"),
    ("dbSize >", "expected a number, a variable or '('"),
    ("(dbSize > 1", "expected ')'"),
    ("dbSize > 1)", "unexpected ')'"),
    ("dbSize > 1 2", "unexpected '2'"),
    ("", "the rule is empty"),
    ("dbSize & 1", "use && and ||"),
    ("dbSize > 1; rm -rf /", "unexpected character ';'"),
    ("__import__('os')", "unexpected character"),
    ("__import__ > 1", "unknown variable '__import__'"),
    ("dbSize", "must be true or false"),
    ("dbSize + 1", "must be true or false"),
    ("dbSize && true", "'&&' needs bools"),
    ("!dbSize", "'!' needs a bool"),
    ("-true", "'-' needs a number"),
    ("1 < 2 < 3", "'<' needs numbers"),
    ("true == 1", "cannot compare a bool with a number"),
    ("010 > 1", "leading zero"),
])
def test_errors_are_usage_errors_at_parse_time(text: str, message: str) -> None:
    with pytest.raises(RuleSyntaxError) as info:
        compile_rule(text)
    assert message in str(info.value)
    assert isinstance(info.value, UsageError)
    assert info.value.exit_code == EXIT_USAGE


def test_error_points_at_the_column() -> None:
    with pytest.raises(RuleSyntaxError) as info:
        compile_rule("dbSize > 1 && frag > 0.5")
    lines = str(info.value).splitlines()
    assert lines[-2].strip() == "dbSize > 1 && frag > 0.5"
    assert lines[-1].index("^") - lines[-2].index("d") == len("dbSize > 1 && ")


def test_rule_variables() -> None:
    env = rule_variables(200 * MiB, 50 * MiB, 2 * 1024**3)
    assert env["dbSizeFree"] == 150 * MiB
    assert env["fragmentation"] == 0.75
    assert env["dbQuota"] == 2 * 1024**3
    assert env["dbQuotaUsage"] == pytest.approx(200 / 2048)
    empty = rule_variables(0, 0, -1)  # no quota
    assert empty["fragmentation"] == 0.0 and empty["dbQuotaUsage"] == 0.0 and empty["dbQuota"] == math.inf
    unknown = rule_variables(0, 0, None)  # quota unknown: nothing is made up
    assert "dbQuota" not in unknown and "dbQuotaUsage" not in unknown
    with pytest.raises(RuleEvalError, match="without dbQuotaUsage"):
        compile_rule("dbQuotaUsage > 0.5").matches(unknown)


def test_auto_rule_is_openshifts() -> None:
    rule = compile_rule(AUTO_RULE)
    assert rule.matches(rule_variables(200 * MiB, 100 * MiB, None))  # 50 % fragmented, 100 MiB free
    assert not rule.matches(rule_variables(200 * MiB, 120 * MiB, None))  # 40 % fragmented
    assert not rule.matches(rule_variables(90 * MiB, 10 * MiB, None))  # fragmented but only 80 MiB free
    assert not rule.matches(rule_variables(150 * MiB, 60 * MiB, None))  # 60 % fragmented, 90 MiB free
    assert rule.matches(rule_variables(1000 * MiB, 550 * MiB, None))  # exactly 45 %, 450 MiB free


def test_etcd_defrag_style_rules() -> None:
    rule = compile_rule("dbQuotaUsage > 0.8 || dbSizeFree > 200*1024*1024")
    assert rule.matches(rule_variables(1700 * MiB, 1690 * MiB, 2 * 1024**3))  # 83 % of the quota
    assert rule.matches(rule_variables(500 * MiB, 250 * MiB, 2 * 1024**3))  # 250 MiB free
    assert not rule.matches(rule_variables(500 * MiB, 400 * MiB, 2 * 1024**3))
