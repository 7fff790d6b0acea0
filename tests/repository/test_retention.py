"""Retention is pure logic over catalog entries and an injected clock; these runs simulate months of
backups with random failures and check the promises after every single run."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from etcdwarden.errors import UsageError
from etcdwarden.format.manifest import Manifest
from etcdwarden.repository.base import ObjectInfo
from etcdwarden.repository.catalog import CatalogEntry
from etcdwarden.repository.retention import (
    GIB,
    IncompleteCleanup,
    KeepWithin,
    MinKeep,
    RetentionConfig,
    RetentionNumber,
    RetentionSize,
    Tiered,
    parse_duration,
    plan_retention,
)

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def entry(t: dt.datetime, size: int = GIB // 4, state: str = "complete", touched: dt.datetime | None = None,
          ) -> CatalogEntry:
    bid = t.strftime("%Y-%m-%d_%H%M%S")
    objs = [ObjectInfo(f"snapshot_{bid}.db", size, touched or t)]
    manifest = None if state == "incomplete" else Manifest.model_validate(
        {"timestamp": bid, "snapshot": {"file": f"snapshot_{bid}.db"}, "verified": state == "complete",
         "files": {f"snapshot_{bid}.db": {"sha256": "0" * 64, "size": size}}})
    if manifest is not None:
        objs.append(ObjectInfo(f"backup_{bid}.json", 0, touched or t))
    return CatalogEntry(bid, t, state, None if state == "complete" else "failed", objs, manifest,
                        f"backup_{bid}.json" if manifest is not None else None)


def simulate(config: RetentionConfig, runs: int, seed: int, fail_rate: float = 0.3,
             sizes: tuple[int, int] = (GIB // 8, GIB), step: dt.timedelta = dt.timedelta(hours=1),
             fail_streak: tuple[int, int] | None = None) -> list[tuple[int, list[CatalogEntry], set[str]]]:
    """Run ``runs`` backups (each followed by retention); returns (run, entries after, deleted) per run."""
    rng = random.Random(seed)
    repo: list[CatalogEntry] = []
    history = []
    for run in range(runs):
        now = T0 + run * step
        failing = rng.random() < fail_rate or (fail_streak is not None and fail_streak[0] <= run < fail_streak[1])
        if failing:
            repo.append(entry(now, rng.randint(1, GIB), rng.choice(["incomplete", "unverified"])))
        else:
            repo.append(entry(now, rng.randint(*sizes)))
        good_before = [e for e in repo if e.good]
        plan = plan_retention(repo, config, now + dt.timedelta(minutes=5))
        newest = max((e.id for e in good_before), default=None)
        assert newest is None or newest not in plan.delete, "the newest verified backup was deleted"
        repo = [e for e in repo if e.id not in plan.delete]
        history.append((run, list(repo), set(plan.delete)))
    return history


def _succeeded_so_far(hist: list[tuple[int, list[CatalogEntry], set[str]]]) -> list[list[str]]:
    """The IDs of the runs that had succeeded, after each run (a run's backup is complete when taken)."""
    out: list[list[str]] = []
    ok: list[str] = []
    for run, repo, _deleted in hist:
        now_id = (T0 + run * dt.timedelta(hours=1)).strftime("%Y-%m-%d_%H%M%S")
        if any(e.id == now_id and e.good for e in repo):
            ok.append(now_id)
        out.append(list(ok))
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [1, 5, 15])
def test_number_is_exact_after_every_run(seed: int, n: int) -> None:
    hist = simulate(RetentionConfig(number=RetentionNumber(n)), 100, seed)
    for (run, repo, _), succeeded in zip(hist, _succeeded_so_far(hist), strict=True):
        good = sorted(e.id for e in repo if e.good)
        # exactly the newest n successes once n have succeeded (never n+1), never zero after the first
        assert good == succeeded[-n:], (run, good, succeeded[-n:])
    assert len(_succeeded_so_far(hist)[-1]) > 50


@pytest.mark.parametrize("seed", range(8))
def test_size_cap_never_exceeded_except_newest_alone(seed: int) -> None:
    cap_gib = 2.0
    hist = simulate(RetentionConfig(size=RetentionSize(cap_gib)), 100, seed, sizes=(GIB // 10, 3 * GIB))
    alone_over = 0
    for (_run, repo, _), succeeded in zip(hist, _succeeded_so_far(hist), strict=True):
        good = [e for e in repo if e.good]
        assert bool(good) == bool(succeeded), "never zero once one succeeded"
        total = sum(e.size for e in good)
        if len(good) == 1 and total > cap_gib * GIB:
            alone_over += 1  # the newest alone may exceed (alert); it is never deleted
            continue
        assert total <= cap_gib * GIB


def test_newest_alone_over_cap_is_kept_with_alert() -> None:
    es = [entry(T0, 2 * GIB), entry(T0 + dt.timedelta(hours=1), 5 * GIB)]
    plan = plan_retention(es, RetentionConfig(size=RetentionSize(1)), T0 + dt.timedelta(hours=2))
    assert list(plan.delete) == [es[0].id] and list(plan.keep) == [es[1].id]
    assert plan.alerts and "over the size cap of 1GiB" in plan.alerts[0]


def test_size_keeps_a_contiguous_newest_run() -> None:
    # 0.5, 3 (too big), 0.5 GiB: the older small one is not kept in place of the newer big one
    es = [entry(T0, GIB // 2), entry(T0 + dt.timedelta(hours=1), 3 * GIB), entry(T0 + dt.timedelta(hours=2), GIB // 2)]
    plan = plan_retention(es, RetentionConfig(size=RetentionSize(2)), T0 + dt.timedelta(hours=3))
    assert sorted(plan.delete) == [es[0].id, es[1].id]


@pytest.mark.parametrize("seed", range(5))
def test_number_and_size_together(seed: int) -> None:
    config = RetentionConfig(number=RetentionNumber(6), size=RetentionSize(3))
    for _run, repo, _ in simulate(config, 100, seed, sizes=(GIB // 10, 2 * GIB)):
        good = [e for e in repo if e.good]
        assert len(good) <= 6
        assert len(good) == 1 or sum(e.size for e in good) <= 3 * GIB


def test_failures_never_count_and_are_cleaned_after_grace() -> None:
    config = RetentionConfig(number=RetentionNumber(3), incomplete=IncompleteCleanup(dt.timedelta(hours=24)))
    hist = simulate(config, 100, seed=1, fail_rate=0.5)
    for run, repo, _ in hist:
        now = T0 + run * dt.timedelta(hours=1) + dt.timedelta(minutes=5)
        for e in repo:
            if not e.good:
                assert now - e.last_modified < dt.timedelta(hours=24)
    # a burst of failures does not push good ones out
    es = [entry(T0 + dt.timedelta(hours=i)) for i in range(3)]
    es += [entry(T0 + dt.timedelta(hours=3 + i), state="incomplete") for i in range(10)]
    plan = plan_retention(es, config, T0 + dt.timedelta(hours=14))
    assert plan.delete == {} and len(plan.keep) == 3 and len(plan.leave) == 10


def test_failure_in_progress_is_left_alone_until_untouched_for_grace() -> None:
    e = entry(T0, state="incomplete", touched=T0 + dt.timedelta(hours=30))  # still being written to
    config = RetentionConfig(incomplete=IncompleteCleanup(dt.timedelta(hours=24)))
    assert plan_retention([e], config, T0 + dt.timedelta(hours=31)).delete == {}
    assert list(plan_retention([e], config, T0 + dt.timedelta(hours=55)).delete) == [e.id]


def test_unreadable_manifest_is_never_deleted() -> None:
    e = entry(T0, state="unreadable")
    plan = plan_retention([e], RetentionConfig(), T0 + dt.timedelta(days=400))
    assert plan.delete == {} and plan.alerts


def test_keep_within_with_min_keep_floor_survives_a_failure_streak() -> None:
    config = RetentionConfig(within=KeepWithin(dt.timedelta(hours=12)), min_keep=MinKeep(3))
    # runs 20..80 all fail: after 12 h every good backup is outside the window
    hist = simulate(config, 100, seed=3, fail_rate=0.0, fail_streak=(20, 80))
    for run, repo, _ in hist:
        good = [e for e in repo if e.good]
        assert len(good) >= min(3, run + 1)
    # without the floor only the newest survives the streak (it is never deleted)
    hist = simulate(RetentionConfig(within=KeepWithin(dt.timedelta(hours=12))), 100, seed=3, fail_rate=0.0,
                    fail_streak=(20, 80))
    assert len([e for e in hist[70][1] if e.good]) == 1


def test_keep_within_alone() -> None:
    es = [entry(T0 + dt.timedelta(hours=i)) for i in range(48)]
    plan = plan_retention(es, RetentionConfig(within=KeepWithin(dt.timedelta(hours=10))),
                          T0 + dt.timedelta(hours=47, minutes=30))
    assert len(plan.keep) == 10 and len(plan.delete) == 38


def test_tiered_keeps_latest_in_each_bucket() -> None:
    es = [entry(T0 + dt.timedelta(minutes=20 * i)) for i in range(3 * 24 * 70)]  # every 20 min for 70 days
    now = es[-1].time + dt.timedelta(minutes=1)
    config = RetentionConfig(tiered=Tiered(hourly=24, daily=7, weekly=4, monthly=3))
    plan = plan_retention(es, config, now)
    kept = {k for k in plan.keep}
    by_id = {e.id: e for e in es}
    assert len(kept) <= 24 + 7 + 4 + 3
    for h in range(24):  # the latest of each of the last 24 hours
        start = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=h)
        in_bucket = [e for e in es if start <= e.time < start + dt.timedelta(hours=1)]
        assert max(in_bucket, key=lambda e: e.time).id in kept
    for d in range(7):
        day = (now - dt.timedelta(days=d)).date()
        in_bucket = [e for e in es if e.time.date() == day]
        assert max(in_bucket, key=lambda e: e.time).id in kept
    for month_start in (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC)):
        in_bucket = [e for e in es if (e.time.year, e.time.month) == (month_start.year, month_start.month)]
        assert max(in_bucket, key=lambda e: e.time).id in kept
    assert all(by_id[k].good for k in kept) and es[-1].id in kept


def test_tiered_with_number_cap() -> None:
    es = [entry(T0 + dt.timedelta(hours=i)) for i in range(24 * 10)]
    config = RetentionConfig(tiered=Tiered(hourly=24, daily=7), number=RetentionNumber(10))
    plan = plan_retention(es, config, es[-1].time)
    assert len(plan.keep) == 10 and es[-1].id in plan.keep


def test_default_is_number_15_and_validation() -> None:
    es = [entry(T0 + dt.timedelta(hours=i)) for i in range(20)]
    plan = plan_retention(es, RetentionConfig(), T0 + dt.timedelta(days=1))
    assert len(plan.keep) == 15 and len(plan.delete) == 5
    assert RetentionNumber().max_number == 15 and RetentionSize().max_size_gib == 10
    for bad in (lambda: RetentionNumber(0), lambda: RetentionSize(0), lambda: MinKeep(-1),
                lambda: RetentionSize(float("inf")), lambda: RetentionSize(float("nan")), lambda: RetentionSize(1e400),
                Tiered, lambda: RetentionConfig(number=RetentionNumber(3), min_keep=MinKeep(4)),
                lambda: parse_duration("soon"), lambda: parse_duration("0h"), lambda: KeepWithin(dt.timedelta(0))):
        with pytest.raises(UsageError):
            bad()
    assert parse_duration("1d12h") == dt.timedelta(hours=36) and parse_duration("90m") == dt.timedelta(minutes=90)
