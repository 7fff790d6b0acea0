"""``restore quorum``: recover a cluster that lost quorum from its most advanced surviving member (no backup)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from etcdwarden.cli.common import client_config, duration_arg
from etcdwarden.cli.output import Output
from etcdwarden.errors import EXIT_OK
from etcdwarden.restore.checks import Forces

CRASH_ENV = "ETCDWARDEN_RESTORE_CRASH_AFTER"  # test hook: fail on purpose after this step (as restore cluster)


def add_parser(s: Any, parents: list[argparse.ArgumentParser], force_help: str) -> None:
    q = s.add_parser("quorum", parents=parents,
                     help="recover a cluster that lost quorum from its most advanced surviving member's data "
                          "(--force-new-cluster on a copy; the others re-added as learners; resumable)")
    q.add_argument("--spec", required=True, metavar="cluster.yaml",
                   help="the members: name, peer_urls, client_urls, data_dir, runtime, host")
    q.add_argument("--survivor", metavar="NAME",
                   help="the member to recover from (default: the most advanced one whose data passes the checks)")
    q.add_argument("--initial-cluster-token", dest="token", help="token given to the members as they rejoin")
    q.add_argument("--state", metavar="FILE", help="state file (default: <spec>.quorum-state.json beside the spec)")
    q.add_argument("--timeout", type=duration_arg(positive=True), default=120.0, metavar="DURATION",
                   help="how long to wait for each member to stop, start and become healthy (default 2m)")
    q.add_argument("--dry-run", action="store_true",
                   help="read the data dirs, choose the survivor, print the plan; change nothing")
    q.add_argument("--force", nargs="?", const="all", action="append", metavar="CHECK", help=force_help)
    q.set_defaults(func=cmd_quorum)


def survey_table(out: Output, surveys: list[Any]) -> None:
    """Each member's data dir as read offline: revision, applied index, committed index and term."""
    rows: list[list[object]] = []
    for s in surveys:
        pos = s.position or ("-", "-")
        rows.append([s.name, s.state, s.revision if s.revision is not None else "-",
                     s.applied_index if s.applied_index is not None else "-", pos[1], pos[0], s.data_dir,
                     "; ".join(s.problems + s.notes) or "-"])
    out.table(["MEMBER", "DATA", "REVISION", "APPLIED INDEX", "COMMITTED INDEX", "TERM", "DATA DIR", "NOTES"], rows)


def cmd_quorum(args: argparse.Namespace, out: Output) -> int:
    from etcdwarden.restore.quorum import QuorumRestoreOptions, plan_quorum_restore, restore_quorum

    opts = QuorumRestoreOptions(
        spec_path=Path(args.spec), survivor=args.survivor, state_path=Path(args.state) if args.state else None,
        token=args.token, forces=Forces.parse(args.force), client=client_config(args),
        crash_after=os.environ.get(CRASH_ENV) or None, timeout=float(args.timeout))
    if args.dry_run:
        plan = asyncio.run(plan_quorum_restore(opts))
        if out.is_json:
            out.json({"dry_run": True, "survivor": plan.survivor, "resume_from": plan.resume_from,
                      "warnings": plan.warnings, "data_dirs": [s.as_json() for s in plan.surveys],
                      "steps": [{"step": s, "commands": c} for s, c in plan.steps]})
        else:
            survey_table(out, plan.surveys)
            out.line(f"quorum restore plan from {plan.survivor} for {opts.spec_path} (dry run: nothing changed)")
            if plan.resume_from:
                out.line(f"a previous run stopped before step {plan.resume_from}: a real run continues there")
            for i, (step, commands) in enumerate(plan.steps, 1):
                out.line(f"  {i}. {step}")
                for cmd in commands:
                    out.line(f"       {cmd}")
        for w in plan.warnings:
            out.warn(w)
        return EXIT_OK
    report = asyncio.run(restore_quorum(opts, progress=out.info))
    for w in report.warnings:
        out.warn(w)
    if out.is_json:
        out.json(report.as_json())
        return EXIT_OK
    rows = [[m["name"], m["role"], m["member_id"] or "", m["runtime"], m.get("pid") or "-", m["data_dir"],
             m["moved_aside"] or "-"] for m in report.members]
    out.table(["NAME", "ROLE", "MEMBER ID", "RUNTIME", "PID", "DATA DIR", "PREVIOUS DATA MOVED TO"], rows)
    if report.check:
        first = report.check["members"][0]
        out.line(f"verified: revision {report.check['expected_revision']}, HashKV {first['hash']} on all "
                 f"{len(report.check['members'])} members, {first['keys']} keys")
    if report.seconds is not None:
        out.line(f"recovered from {report.survivor} (revision {report.revision}); stop -> healthy in "
                 f"{report.seconds:.1f}s; state {report.state_path}")
    return EXIT_OK
