"""``etcdwarden backups drill REPO``: prove backups restorable by restoring them into a throwaway member.

Registered under ``backups`` by :mod:`etcdwarden.cli.backups_cmd`. Exit 0 when every drill passed and its
record was written; 1 when a drill failed (the backup shows ``unproven`` in ``backups list``; nothing is
deleted) or its record could not be written; 2 for bad input (no identity for an encrypted backup, no
credentials for one with auth enabled, an etcd too old for the backup).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from etcdwarden.cli.common import duration_arg
from etcdwarden.cli.output import Output
from etcdwarden.cli.repo_options import repo_opts, repository_options
from etcdwarden.errors import EXIT_FAILED, EXIT_OK, UsageError


def register(cmds: Any, parents: list[argparse.ArgumentParser]) -> None:
    q = cmds.add_parser(
        "drill", parents=parents, help="prove backups restorable: restore into a throwaway member and compare",
        description="Restore a backup into a throwaway etcd on 127.0.0.1 (never touching the cluster) and prove "
                    "it: the member starts, its revision, key count and HashKV at the backup's revision equal the "
                    "manifest's, every Kubernetes value decodes, the resources bundle holds what the manifest "
                    "lists. The result is written beside the backup (drill_<ts>.json); a failed drill marks the "
                    "backup unproven in `backups list`, deletes nothing and exits 1. Without --id the newest "
                    "complete backup is drilled. Needs room for about twice the database in --temp-dir.")
    q.add_argument("repo", metavar="REPO")
    which = q.add_mutually_exclusive_group()
    which.add_argument("--id", metavar="TS", help="the backup to drill (its timestamp, YYYY-MM-DD_HHMMSS)")
    which.add_argument("--all-unproven", action="store_true",
                       help="drill every complete backup without a passing drill younger than --max-age")
    q.add_argument("--max-age", type=duration_arg(positive=True), default="7d", metavar="DURATION",
                   help="with --all-unproven: a passing drill younger than this proves a backup (default 7d)")
    q.add_argument("--identity", metavar="FILE", help="age identity file, for encrypted backups")
    q.add_argument("--temp-dir", metavar="DIR",
                   help="where the private directory of the restored copy goes (default: the current directory; "
                        "never the system temp dir for an encrypted or compressed backup)")
    q.add_argument("--etcd", metavar="PATH", help="the etcd binary that serves the restored copy")
    q.add_argument("--etcdutl", metavar="PATH", help="the etcdutl binary that restores it")
    q.add_argument("--nice", type=int, default=0, choices=range(20), metavar="N",
                   help="run etcdutl and etcd with this niceness (0-19; default 0)")
    repo_opts(q)
    q.set_defaults(func=cmd_drill)


def cmd_drill(args: argparse.Namespace, out: Output) -> int:
    from etcdwarden.restore.drill import DrillOptions, run_drills

    if args.temp_dir and not Path(args.temp_dir).is_dir():
        raise UsageError(f"--temp-dir {args.temp_dir}: no such directory")
    options = DrillOptions(
        identity=Path(args.identity) if args.identity else None,
        work_dir=Path(args.temp_dir) if args.temp_dir else Path.cwd(),
        etcd=Path(args.etcd) if args.etcd else None, etcdutl=Path(args.etcdutl) if args.etcdutl else None,
        nice=int(args.nice), progress=None if out.is_json else lambda step: out.info(f"  ... {step}"))
    report = run_drills(args.repo, options, backup_id=args.id, all_unproven=bool(args.all_unproven),
                        max_age=dt.timedelta(seconds=args.max_age), repository_options=repository_options(args))
    code = EXIT_OK if report.ok else EXIT_FAILED
    if out.is_json:
        out.json(report.as_json())
    else:
        _render(report, out)
    for o in report.outcomes:
        if not o.record.passed:
            out.error(f"backup {o.backup} is unproven: " + "; ".join(o.record.problems))
        if o.write_error:
            out.error(f"backup {o.backup}: {o.write_error}")
    return code


def _render(report: Any, out: Output) -> None:
    for o in report.outcomes:
        r = o.record
        out.line(f"drill of backup {o.backup}: {r.result.upper()} (etcd {r.etcd_version}, "
                 f"{r.durations.get('total', 0.0):.1f}s)")
        rows = [[name, "-" if f.recorded is None else f.recorded, "-" if f.measured is None else f.measured,
                 "equal" if f.ok else "DIFFERENT" if f.ok is False else "not compared"]
                for name, f in r.figures.items()]
        if rows:
            out.table(["FIGURE", "RECORDED", "MEASURED", "RESULT"], rows)
        for name, c in r.checks.items():
            out.line(f"  {'ok  ' if c.ok else 'FAIL'} {name}: {c.detail}")
        for n in r.notes:
            out.info(n)
        for name, f in r.figures.items():
            if f.ok is None and f.note:
                out.info(f"{name}: {f.note}")
        if o.location:
            out.info(f"record: {o.location}")
    for backup_id, why in report.skipped.items():
        out.info(f"skipped {backup_id}: {why}")
    for n in report.notes:
        out.info(n)
