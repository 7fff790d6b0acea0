"""How ``backups list|show`` print the recoverable window (continuous backup) and a restore's plan."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from etcdwarden.cli.output import Output, humanize_bytes

if TYPE_CHECKING:
    from etcdwarden.repository.base import Repository
    from etcdwarden.repository.window import ChainWindow, Point, ReplayPlan, Window


def when(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if t else "-"


def point(p: Point | None) -> str:
    return f"revision {p.revision} at {when(p.time)}" if p is not None else "-"


def chain_state(c: ChainWindow) -> str:
    if c.broken is not None:
        return f"BROKEN at {c.broken.at}: {c.broken.problem}"
    if c.closed is not None:
        return f"closed ({c.closed})"
    return "receiving" if c.receiving else "open"


def render_window(out: Output, w: Window) -> None:
    """The chains with segments, then the window: earliest and latest restorable points, and any gap."""
    chains = [c for c in w.chains if c.segments or c.broken]
    if not chains:
        return
    out.line("")
    out.line("Recoverable window (continuous backup):")
    out.table(["BASE", "FROM REVISION", "TO REVISION", "FROM", "TO", "SEGMENTS", "SIZE", "CHAIN"],
              [[c.base, c.start.revision, c.end.revision, when(c.start.time), when(c.end.time), len(c.segments),
                humanize_bytes(sum(s.size for s in c.segments)), chain_state(c)] for c in w.chains])
    out.line(f"earliest: {point(w.earliest)}")
    out.line(f"latest:   {point(w.latest)}")
    for a, b in w.gaps:
        out.warn(f"GAP: nothing after {point(a)} can be restored until {point(b)} (the full backup after it)")
    for c in chains:
        if c.broken is not None:
            out.warn(f"the chain of {c.base} breaks at {c.broken.at} ({c.broken.problem}): a restore can reach "
                     f"{point(c.end)} at most from it")
    for p in w.problems:
        out.warn(p)


def render_plan(out: Output, plan: ReplayPlan, repo: Repository) -> None:
    out.line(f"target:          {plan.target}")
    out.line(f"restores to:     revision {plan.stop_revision} (seen at {when(plan.stop_time)})")
    where = repo.where(plan.base.manifest_name or "")
    out.line(f"base backup:     {plan.base.id} (revision {plan.base_revision})  {where}")
    out.line(f"replays:         {plan.revisions} revision(s) from {len(plan.segments)} segment(s)")
    for s in plan.segments:
        part = "" if s.last_revision <= plan.stop_revision else f" (up to revision {plan.stop_revision})"
        out.line(f"  {s.file}  revisions {s.first_revision}..{s.last_revision}{part}  {s.size} bytes")
