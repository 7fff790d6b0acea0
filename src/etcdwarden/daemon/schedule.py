"""Cron schedules in an IANA time zone, with daylight-saving time handled the way cron users expect.

Wall-clock times are enumerated by croniter on *naive* local times (pure calendar arithmetic) and then
mapped to instants here, which is where DST is decided:

* a wall time that does not exist (spring forward, e.g. 02:30 in Europe/Berlin on the last Sunday of
  March) runs once at the first instant after the gap (03:00 local);
* a wall time that happens twice (fall back, e.g. 02:30 on the last Sunday of October) runs once, at
  its first occurrence; only schedules whose hour field is ``*`` (hourly and finer) also run in the
  repeated hour, so their interval stays regular (Vixie cron's rule);
* several wall times that map to the same instant run once.

Whether a job is due is :func:`due_slot`: a pure function of the schedule, the clock and the job's
recorded last finish (or, for a job that never ran, when it was first seen), so it is tested with an
injected clock and no sleeping.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass

from croniter import croniter

from etcdwarden.daemon.config import expand_cron

UTC = dt.UTC
_MARGIN = dt.timedelta(hours=3)  # wider than any DST shift, so reordering near transitions is seen
_MAX_STEPS = 200_000


def utc(t: dt.datetime) -> dt.datetime:
    if t.tzinfo is None:
        raise ValueError("naive datetime; pass an aware one")
    return t.astimezone(UTC)


@dataclass(frozen=True)
class Schedule:
    expr: str
    tz_name: str = "UTC"

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.tz_name)

    @property
    def cron(self) -> str:
        return expand_cron(self.expr)

    @property
    def wildcard_hour(self) -> bool:
        return self.cron.split()[1] in ("*", "*/1")

    # -- wall time → instants ------------------------------------------------------------------
    def _wall(self, t: dt.datetime) -> dt.datetime:
        return utc(t).astimezone(self.tz).replace(tzinfo=None)

    def _exists(self, wall: dt.datetime) -> bool:
        return self._wall(wall.replace(tzinfo=self.tz, fold=0)) == wall

    def instants(self, wall: dt.datetime) -> list[dt.datetime]:
        """The UTC instants at which the naive local time ``wall`` fires."""
        z = self.tz
        first = wall.replace(tzinfo=z, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=z, fold=1).astimezone(UTC)
        if first == second:
            return [first]
        if not self._exists(wall):  # in a gap: the first instant after it
            w = wall
            for _ in range(24 * 60):
                w += dt.timedelta(minutes=1)
                if self._exists(w):
                    return [w.replace(tzinfo=z, fold=0).astimezone(UTC)]
            raise ValueError(f"no valid time after {wall} in {self.tz_name}")
        return [first, second] if self.wildcard_hour else [first]

    # -- iteration -------------------------------------------------------------------------------
    def next_after(self, t: dt.datetime) -> dt.datetime:
        """The first firing instant strictly after ``t``."""
        t = utc(t)
        it = croniter(self.cron, self._wall(t) - _MARGIN)
        best: dt.datetime | None = None
        for _ in range(_MAX_STEPS):
            wall = it.get_next(dt.datetime)
            if best is not None and wall > self._wall(best) + _MARGIN:
                return best
            for u in self.instants(wall):
                if u > t and (best is None or u < best):
                    best = u
        raise ValueError(f"schedule {self.expr!r} does not fire after {t}")

    def latest_at_or_before(self, t: dt.datetime) -> dt.datetime | None:
        """The last firing instant at or before ``t`` (None if there is none in 5 years)."""
        t = utc(t)
        it = croniter(self.cron, self._wall(t) + _MARGIN)
        best: dt.datetime | None = None
        floor = self._wall(t) - dt.timedelta(days=5 * 366)
        for _ in range(_MAX_STEPS):
            wall = it.get_prev(dt.datetime)
            if best is not None and wall < self._wall(best) - _MARGIN:
                return best
            if wall < floor:
                return best
            for u in self.instants(wall):
                if u <= t and (best is None or u > best):
                    best = u
        return best

    def iter_after(self, t: dt.datetime) -> Iterator[dt.datetime]:
        while True:
            t = self.next_after(t)
            yield t

    def longest_gap(self, start: dt.datetime, count: int = 32) -> float:
        """The longest interval (seconds) between the next ``count`` firings: what "2x the schedule" means."""
        prev = self.next_after(start)
        gap = 0.0
        it = self.iter_after(prev)
        for _ in range(count):
            nxt = next(it)
            gap = max(gap, (nxt - prev).total_seconds())
            prev = nxt
        return gap

    def shortest_gap(self, start: dt.datetime, count: int = 32) -> float:
        prev = self.next_after(start)
        gap = float("inf")
        it = self.iter_after(prev)
        for _ in range(count):
            nxt = next(it)
            gap = min(gap, (nxt - prev).total_seconds())
            prev = nxt
        return gap


def local_time(schedule: Schedule, t: dt.datetime) -> str:
    """An instant as the schedule's wall time: ``2024-05-02 03:00 CEST (Europe/Berlin)``."""
    wall = utc(t).astimezone(schedule.tz)
    return f"{wall:%Y-%m-%d %H:%M} {wall.tzname()} ({schedule.tz_name})"


def jitter_offset(key: str, slot: dt.datetime, jitter: float) -> float:
    """A delay in ``[0, jitter)`` seconds, the same on every agent and every restart for this slot."""
    if jitter <= 0:
        return 0.0
    h = hashlib.sha256(f"{key}|{utc(slot).isoformat()}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 * jitter


@dataclass(frozen=True)
class Due:
    slot: dt.datetime  # the scheduled instant this run is for (``now`` for a run off the schedule)
    start_at: dt.datetime  # slot + jitter
    first_run: bool = False
    missed: bool = False  # the slot passed while the daemon was down or busy (catch-up run)
    attempt: int = 1  # 2, 3...: a retry of the slot after failed attempts

    @property
    def retry(self) -> bool:
        return self.attempt > 1


def due_slot(schedule: Schedule, key: str, now: dt.datetime, last_finished: dt.datetime | None,
             jitter: float = 0.0, catch_up: bool = True, tolerance: float = 300.0,
             use_jitter: bool = True) -> Due | None:
    """Whether the job is due at ``now``, and for which slot.

    ``last_finished`` is when the last run finished, or, for a job that never ran, when it was first seen:

    * nothing known (None): not due; the job is first recorded as seen, then waits for its first slot (the
      executor's one exception, a backup with no complete backup in its repository, does not come here);
    * otherwise the latest slot at or before ``now`` is due if it came after ``last_finished``:
      slots that passed while the job was running are skipped (no overlapping or back-to-back runs),
      and however many slots passed during downtime, one catch-up run is due, not one per slot;
    * ``catch_up=False``: a slot is only run within ``tolerance`` seconds of its start time;
    * with jitter, the run starts ``jitter_offset`` after the slot.
    """
    now = utc(now)
    if last_finished is None:
        return None
    slot = schedule.latest_at_or_before(now)
    if slot is None or slot <= utc(last_finished):
        return None
    start = slot + dt.timedelta(seconds=jitter_offset(key, slot, jitter) if use_jitter else 0.0)
    if now < start:
        return None
    late = (now - start).total_seconds()
    if not catch_up and late > tolerance:
        return None
    return Due(slot=slot, start_at=start, missed=late > tolerance)


def next_wakeup(schedule: Schedule, key: str, now: dt.datetime, last_finished: dt.datetime | None,
                jitter: float = 0.0) -> dt.datetime:
    """When the job may next become due (for sleeping until then)."""
    now = utc(now)
    slot = schedule.latest_at_or_before(now)
    if slot is not None and last_finished is not None and slot > utc(last_finished):
        start = slot + dt.timedelta(seconds=jitter_offset(key, slot, jitter))
        if start > now:
            return start
    nxt = schedule.next_after(now)
    return nxt + dt.timedelta(seconds=jitter_offset(key, nxt, jitter))
