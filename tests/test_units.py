"""One grammar for durations and sizes (etcdwarden.units): flags, the daemon's config and retention agree."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdwarden.units import (
    GIB,
    MAX_DURATION,
    MAX_SIZE,
    UnitError,
    format_duration,
    format_size,
    parse_duration,
    parse_gib,
    parse_size,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("1h30m", 5400), ("1d", 86400), ("2w", 1209600), ("1.5h", 5400), ("1d12h", 129600),
    # etcdctl's (Go's) forms, for --dial-timeout and --command-timeout
    ("2s", 2), ("500ms", 0.5), ("250us", 0.00025), ("250µs", 0.00025), ("100ns", 1e-7), ("1m30s", 90),
    ("0", 0), ("0s", 0), (" 5m ", 300), ("+5s", 5),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("value", "message"), [
    ("90", "90 has no unit; did you mean 90s?"),
    (90, "90 has no unit; did you mean 90s?"),  # a YAML number
    (1.5, "1.5 has no unit; did you mean 1.5s?"),
    ("-5s", "cannot be negative"),
    (-5, "cannot be negative"),
    ("1D", "unknown unit 'D'"),
    ("1h30", "a number without a unit"),
    ("soon", "invalid duration 'soon'"),
    ("", "empty duration"),
    ("1e400s", "unknown unit"),
    ("inf", "invalid duration"),
    (float("inf"), "not a duration"),
    (float("nan"), "not a duration"),
    (True, "not a duration"),
    ("99999999999999999999999999d", "too long"),
    ("101y", "unknown unit 'y'"),
])
def test_bad_durations(value: object, message: str) -> None:
    with pytest.raises(UnitError, match=message.replace("?", r"\?").replace("(", r"\(")):
        parse_duration(value)


@pytest.mark.parametrize(("text", "size"), [
    ("100MiB", 100 * 1024**2), ("10GiB", 10 * GIB), ("1.5GB", 1_500_000_000), ("512KiB", 512 * 1024),
    ("2Gi", 2 * GIB), ("500MB", 500_000_000), ("0", 0), ("0.5GiB", GIB // 2), ("1B", 1),
])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("value", "message"), [
    ("10", "10 has no unit; did you mean 10GiB or 10MiB?"),
    ("2147483648", "did you mean 2147483648B (2GiB)?"),
    (10, "10 has no unit"),
    ("-1GiB", "cannot be negative"),
    ("10 gigs", "unknown unit 'gigs'"),
    ("inf", "invalid size"),
    ("nan", "invalid size"),
    ("1e400GiB", "invalid size"),
    (float("inf"), "not a size"),
    ("2000PiB", "too large"),
])
def test_bad_sizes(value: object, message: str) -> None:
    with pytest.raises(UnitError, match=message.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")):
        parse_size(value)


def test_bare_bytes_for_settings_named_in_bytes() -> None:
    assert parse_size("2147483648", bare_bytes=True) == 2 * GIB
    assert parse_size(8589934592, bare_bytes=True) == 8 * GIB
    assert parse_size("8GiB", bare_bytes=True) == 8 * GIB
    with pytest.raises(UnitError, match="whole number of bytes"):
        parse_size(1.5, bare_bytes=True)


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-inf", "0", "-1", "1e300", "ten", float("nan")])
def test_gib_refuses_non_finite_negative_and_huge(value: object) -> None:
    with pytest.raises(UnitError):
        parse_gib(value)


def test_gib() -> None:
    assert parse_gib("10") == 10 * GIB and parse_gib(0.5) == GIB // 2 and parse_gib("1024") == 1024 * GIB


def test_format() -> None:
    assert [format_duration(s) for s in (0, 0.5, 90, 5400, 86400, 604800, 129600, 90.5)] == \
        ["0s", "500ms", "1m30s", "1h30m", "1d", "1w", "1d12h", "1m30.5s"]
    assert [format_size(n) for n in (999, 1536 * 1024, 10 * GIB)] == ["999B", "1.5MiB", "10GiB"]


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=int(MAX_DURATION)))
def test_whole_seconds_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=999))
def test_milliseconds_round_trip(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) == pytest.approx(ms / 1000)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.none(), st.booleans()))
def test_any_input_parses_or_is_a_unit_error(value: object) -> None:
    """No input makes a parser raise anything but UnitError, or return a negative, non-finite or huge value."""
    for parse, limit in ((parse_duration, MAX_DURATION), (parse_size, MAX_SIZE),
                         (lambda v: parse_size(v, bare_bytes=True), MAX_SIZE), (parse_gib, MAX_SIZE)):
        try:
            got = parse(value)
        except UnitError:
            continue
        assert math.isfinite(got) and 0 <= got <= limit


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"\A(?:[0-9]{1,6}(?:\.[0-9]{1,3})?(?:ns|us|ms|s|m|h|d|w)){1,4}\Z"))
def test_well_formed_durations_parse(text: str) -> None:
    try:
        assert 0 <= parse_duration(text) <= MAX_DURATION
    except UnitError as e:
        assert "too long" in str(e)
