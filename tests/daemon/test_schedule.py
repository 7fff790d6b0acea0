"""Cron in a time zone, DST, jitter, catch-up: all against an injected clock, nothing sleeps."""

from __future__ import annotations

import datetime as dt
import itertools
import zoneinfo

import pytest

from etcdwarden.daemon.schedule import Schedule, due_slot, jitter_offset, local_time, next_wakeup

pytestmark = pytest.mark.unit

UTC = dt.UTC
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
NY = zoneinfo.ZoneInfo("America/New_York")


def local(t: dt.datetime, tz: zoneinfo.ZoneInfo) -> str:
    return t.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")


def firings(s: Schedule, start: dt.datetime, n: int) -> list[dt.datetime]:
    return list(itertools.islice(s.iter_after(start), n))


def test_plain_utc_and_macros() -> None:
    s = Schedule("20 4 * * *", "UTC")
    assert s.next_after(dt.datetime(2024, 5, 1, 4, 20, tzinfo=UTC)) == dt.datetime(2024, 5, 2, 4, 20, tzinfo=UTC)
    assert s.latest_at_or_before(dt.datetime(2024, 5, 1, 4, 20, tzinfo=UTC)) == dt.datetime(2024, 5, 1, 4, 20,
                                                                                           tzinfo=UTC)
    h = Schedule("@hourly", "UTC")
    assert h.next_after(dt.datetime(2024, 5, 1, 4, 20, tzinfo=UTC)) == dt.datetime(2024, 5, 1, 5, 0, tzinfo=UTC)
    assert Schedule("@daily", "UTC").longest_gap(dt.datetime(2024, 5, 1, tzinfo=UTC)) == 86400
    # weekdays only: the longest gap spans the weekend, which is what "2x the schedule" must use
    assert Schedule("0 3 * * 1-5", "UTC").longest_gap(dt.datetime(2024, 5, 1, tzinfo=UTC)) == 3 * 86400


def test_berlin_spring_forward_runs_once_after_the_gap() -> None:
    s = Schedule("30 2 * * *", "Europe/Berlin")
    got = firings(s, dt.datetime(2024, 3, 29, 12, tzinfo=UTC), 4)
    assert [local(t, BERLIN) for t in got] == [
        "2024-03-30 02:30 CET",
        "2024-03-31 03:00 CEST",  # 02:30 does not exist that night: once, right after the jump
        "2024-04-01 02:30 CEST",
        "2024-04-02 02:30 CEST",
    ]
    # several wall times inside the gap collapse into one run
    q = Schedule("*/20 2 * * *", "Europe/Berlin")
    got = firings(q, dt.datetime(2024, 3, 30, 23, tzinfo=UTC), 2)
    assert [local(t, BERLIN) for t in got] == ["2024-03-31 03:00 CEST", "2024-04-01 02:00 CEST"]


def test_berlin_fall_back_fixed_time_runs_once() -> None:
    s = Schedule("30 2 * * *", "Europe/Berlin")
    got = firings(s, dt.datetime(2024, 10, 26, 12, tzinfo=UTC), 3)
    assert [local(t, BERLIN) for t in got] == [
        "2024-10-27 02:30 CEST",  # the first of the two 02:30s only
        "2024-10-28 02:30 CET",
        "2024-10-29 02:30 CET",
    ]
    assert (got[1] - got[0]) == dt.timedelta(hours=25)


def test_berlin_fall_back_hourly_keeps_its_interval() -> None:
    s = Schedule("30 * * * *", "Europe/Berlin")
    got = firings(s, dt.datetime(2024, 10, 26, 23, 0, tzinfo=UTC), 4)
    assert [local(t, BERLIN) for t in got] == [
        "2024-10-27 01:30 CEST", "2024-10-27 02:30 CEST", "2024-10-27 02:30 CET", "2024-10-27 03:30 CET"]
    assert all(b - a == dt.timedelta(hours=1) for a, b in itertools.pairwise(got))


def test_new_york_both_transitions() -> None:
    s = Schedule("0 2 * * *", "America/New_York")
    spring = firings(s, dt.datetime(2024, 3, 9, 12, tzinfo=UTC), 2)
    assert [local(t, NY) for t in spring] == ["2024-03-10 03:00 EDT", "2024-03-11 02:00 EDT"]
    s1 = Schedule("30 1 * * *", "America/New_York")
    fall = firings(s1, dt.datetime(2024, 11, 2, 12, tzinfo=UTC), 2)
    assert [local(t, NY) for t in fall] == ["2024-11-03 01:30 EDT", "2024-11-04 01:30 EST"]
    # the latest slot before a time inside the repeated hour is the first 01:30
    inside = dt.datetime(2024, 11, 3, 6, 45, tzinfo=UTC)  # 01:45 EST, second pass
    assert s1.latest_at_or_before(inside) == fall[0]


def test_a_job_never_seen_is_not_due_and_one_first_seen_waits_for_its_first_slot() -> None:
    """Issue 11 item 16: nothing is due off the schedule (it used to be due at once)."""
    s = Schedule("20 4 * * *", "UTC")
    now = dt.datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert due_slot(s, "defrag/x", now, None) is None
    assert next_wakeup(s, "defrag/x", now, None) == dt.datetime(2024, 5, 2, 4, 20, tzinfo=UTC)
    # first seen at 12:00: the 04:20 slot of that morning is not due, the next one is
    assert due_slot(s, "defrag/x", now + dt.timedelta(hours=16), now) is None
    d = due_slot(s, "defrag/x", dt.datetime(2024, 5, 2, 4, 20, 1, tzinfo=UTC), now)
    assert d is not None and d.slot == dt.datetime(2024, 5, 2, 4, 20, tzinfo=UTC) and not d.first_run
    assert local_time(Schedule("30 3 * * *", "Europe/Berlin"), dt.datetime(2024, 5, 2, 1, 30, tzinfo=UTC)) == \
        "2024-05-02 03:30 CEST (Europe/Berlin)"


def test_due_at_slot_not_before_and_not_twice() -> None:
    s = Schedule("20 4 * * *", "UTC")
    last = dt.datetime(2024, 5, 1, 4, 21, tzinfo=UTC)
    assert due_slot(s, "k", dt.datetime(2024, 5, 2, 4, 19, 59, tzinfo=UTC), last) is None
    d = due_slot(s, "k", dt.datetime(2024, 5, 2, 4, 20, 1, tzinfo=UTC), last)
    assert d is not None and d.slot == dt.datetime(2024, 5, 2, 4, 20, tzinfo=UTC) and not d.missed
    finished = dt.datetime(2024, 5, 2, 4, 21, tzinfo=UTC)
    assert due_slot(s, "k", dt.datetime(2024, 5, 2, 9, 0, tzinfo=UTC), finished) is None


def test_catch_up_after_downtime_runs_once() -> None:
    s = Schedule("0 * * * *", "Europe/Berlin")
    last = dt.datetime(2024, 5, 1, 10, 0, 30, tzinfo=UTC)
    back = dt.datetime(2024, 5, 3, 7, 17, tzinfo=UTC)  # ~45 hourly slots missed
    d = due_slot(s, "k", back, last)
    assert d is not None and d.missed and d.slot == dt.datetime(2024, 5, 3, 7, 0, tzinfo=UTC)
    # the run finishes: nothing more is due until the next slot (no storm of 45 runs)
    done = back + dt.timedelta(minutes=1)
    assert due_slot(s, "k", done, done) is None
    assert due_slot(s, "k", dt.datetime(2024, 5, 3, 7, 59, tzinfo=UTC), done) is None
    assert due_slot(s, "k", dt.datetime(2024, 5, 3, 8, 0, tzinfo=UTC), done) is not None
    # catch-up disabled: a slot missed by more than the tolerance is skipped
    assert due_slot(s, "k", back, last, catch_up=False, tolerance=300) is None
    assert due_slot(s, "k", dt.datetime(2024, 5, 3, 7, 2, tzinfo=UTC), last, catch_up=False) is not None


def test_slot_passing_during_a_long_run_is_skipped() -> None:
    s = Schedule("*/10 * * * *", "UTC")
    started = dt.datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    finished = dt.datetime(2024, 5, 1, 10, 14, tzinfo=UTC)  # ran past the 10:10 slot
    assert due_slot(s, "k", finished + dt.timedelta(seconds=1), finished) is None
    d = due_slot(s, "k", dt.datetime(2024, 5, 1, 10, 20, tzinfo=UTC), finished)
    assert d is not None and d.slot == dt.datetime(2024, 5, 1, 10, 20, tzinfo=UTC) and started < d.slot


def test_jitter_is_bounded_deterministic_and_delays_the_start() -> None:
    s = Schedule("0 3 * * *", "UTC")
    slot = dt.datetime(2024, 5, 2, 3, 0, tzinfo=UTC)
    offs = {jitter_offset(f"backup/{i}", slot, 600) for i in range(50)}
    assert all(0 <= o < 600 for o in offs) and len(offs) > 40
    assert jitter_offset("backup/a", slot, 600) == jitter_offset("backup/a", slot, 600)
    off = jitter_offset("backup/a", slot, 600)
    last = dt.datetime(2024, 5, 1, 3, 5, tzinfo=UTC)
    just_before = slot + dt.timedelta(seconds=off - 1)
    assert due_slot(s, "backup/a", just_before, last, jitter=600) is None
    assert next_wakeup(s, "backup/a", just_before, last, jitter=600) == slot + dt.timedelta(seconds=off)
    d = due_slot(s, "backup/a", slot + dt.timedelta(seconds=off + 1), last, jitter=600)
    assert d is not None and d.slot == slot
    # --once ignores the jitter (the CronJob is the clock)
    assert due_slot(s, "backup/a", slot, last, jitter=600, use_jitter=False) is not None


def test_next_wakeup() -> None:
    s = Schedule("20 4 * * *", "UTC")
    now = dt.datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert next_wakeup(s, "k", now, None) == dt.datetime(2024, 5, 2, 4, 20, tzinfo=UTC)  # nothing off schedule
    assert next_wakeup(s, "k", now, now) == dt.datetime(2024, 5, 2, 4, 20, tzinfo=UTC)
