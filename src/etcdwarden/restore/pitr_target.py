"""Which point a point-in-time restore goes to: ``--to-time`` parsed, and the repository's window resolved.

The window and the resolver are :mod:`etcdwarden.repository.window` (the base backup at or before the target
whose chain reaches it, the segments, the exact stop revision); this module adds the restore's refusals: a
target past a break of its chain, and (by default) the latest point of a broken chain, are refused (exit 3),
naming the last good point. The segments' data are proven (size, sha256) by :mod:`.pitr` before anything is
replayed, which may move a break earlier (a segment whose bytes are not the ones its manifest records).
"""

from __future__ import annotations

import datetime as dt

from etcdwarden.errors import SafetyRefusal, UsageError
from etcdwarden.repository.base import Repository
from etcdwarden.repository.window import ChainWindow, NotRecoverable, ReplayPlan, Target, Window
from etcdwarden.repository.window import resolve as window_resolve


def fmt_time(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z") if t else "?"


def parse_time(text: str) -> dt.datetime:
    """RFC 3339 (``2026-12-02T10:15:05Z``, fractional seconds, any offset); :class:`UsageError` otherwise."""
    raw = text.strip()
    if len(raw) < 20 or raw[10] not in "Tt ":
        raise UsageError(f"--to-time {text!r}: expected RFC 3339, e.g. 2026-12-02T10:15:05Z or "
                         "2026-12-02T11:15:05.250+01:00")
    norm = raw[:-1] + "+00:00" if raw[-1] in "Zz" else raw
    try:
        t = dt.datetime.fromisoformat(norm)
    except ValueError:
        raise UsageError(f"--to-time {text!r}: not a valid RFC 3339 time") from None
    if t.tzinfo is None:
        raise UsageError(f"--to-time {text!r}: give a time zone (Z or an offset such as +02:00)")
    return t.astimezone(dt.UTC)


def refuse_break(c: ChainWindow, target: Target) -> SafetyRefusal:
    b = c.broken
    assert b is not None
    return SafetyRefusal(
        f"cannot restore {target}: the chain of backup {c.base} breaks at {b.at} ({b.problem}); the last good "
        f"point is revision {b.last_good_revision}: restore it with --to-revision {b.last_good_revision}, or an "
        "older point", None)


def resolve_target(repo: Repository, window: Window, target: Target) -> ReplayPlan:
    """:func:`etcdwarden.repository.window.resolve`, refusing (exit 3) a target past a break of the chain it
    would use (the message names the last good point), and the latest point when that chain is broken."""
    try:
        plan = window_resolve(repo, window, target)
    except NotRecoverable:
        for c in sorted(window.chains, key=lambda c: c.base_revision, reverse=True):
            b = c.broken
            if b is None:
                continue
            if target.revision is not None and c.base_revision <= target.revision and \
                    target.revision > b.last_good_revision:
                raise refuse_break(c, target) from None
            if target.time is not None and c.base_time <= target.time:
                raise refuse_break(c, target) from None
        raise
    chain = window.chain(plan.base.id)
    if target.revision is None and target.time is None and chain.broken is not None:
        raise refuse_break(chain, target)
    return plan


__all__ = ["Target", "fmt_time", "parse_time", "refuse_break", "resolve_target"]
