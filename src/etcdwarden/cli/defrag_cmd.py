"""``defrag``: safe rolling defragmentation (followers first, leader last, rules, NOSPACE clearing)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from etcdwarden.cli._async import with_client
from etcdwarden.cli.common import CLI_SETTINGS, DEFAULT_MANIFEST, duration_arg, resolve
from etcdwarden.cli.output import Output, humanize_bytes
from etcdwarden.defrag import AUTO_RULE, DefragEvent, DefragOptions, DefragReport, compile_rule, rolling_defrag
from etcdwarden.defrag.quota import parse_quota
from etcdwarden.defrag.rules import MAX_DEPTH, MAX_RULE_LENGTH, VARIABLES
from etcdwarden.errors import EXIT_FAILED, EXIT_OK, UsageError
from etcdwarden.etcd.client import EtcdClient

DEFAULT_DEFRAG_TIMEOUT = 30.0  # for the Defragment call when --command-timeout is not given

HEADERS = ["ENDPOINT", "MEMBER", "WAS LEADER", "DB SIZE BEFORE", "DB SIZE AFTER", "IN USE", "TOOK", "RESULT"]

_EPILOG = f"""\
Rule variables (per member, floats): {", ".join(VARIABLES)}.
Operators: + - * / % == != < <= > >= && || ! and parentheses; sizes like 100MiB or 2GiB.
--auto uses OpenShift's controller rule: {AUTO_RULE}
Example: --rule 'dbQuotaUsage > 0.8 || dbSizeFree > 200MiB'
A rule is checked, and tried on sample figures, before anything is dialled (exit 2 if bad): at most
{MAX_RULE_LENGTH} characters and {MAX_DEPTH} levels of nesting, finite numbers, 64-bit integers, no division by zero.
"""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "defrag", parents=parents, help="defragment members one at a time, followers first, the leader last",
        description="Defragment every member, one at a time: followers first, the leader last (or after "
        "moving leadership away), waiting between members until each is healthy again; then clear NOSPACE.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cluster", action="store_true", help="every voting member, from the member list")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--rule", metavar="EXPR", help="defragment only the members for which EXPR is true")
    which.add_argument("--auto", action="store_true", help=f"use the rule {AUTO_RULE!r}")
    p.add_argument("--compact", action="store_true",
                   help="compact the history to the current revision first (physical)")
    p.add_argument("--move-leader", action="store_true",
                   help="move leadership to a defragmented member before defragmenting the leader")
    p.add_argument("--wait", default="60s", type=duration_arg(), metavar="DURATION",
                   help="minimum pause between members (default 60s; each member must also be healthy and "
                        "caught up)")
    p.add_argument("--recover-timeout", default="60s", type=duration_arg(positive=True), metavar="DURATION",
                   help="how long a member may take to be healthy and caught up after its defrag (default 60s)")
    p.add_argument("--continue-on-error", action="store_true",
                   help="go on with the next member after a failed or timed-out defrag")
    p.add_argument("--quota-backend-bytes", "--db-quota-bytes", dest="quota_backend_bytes", metavar="SIZE",
                   help="the members' --quota-backend-bytes (0: etcd's 2GiB default; negative: none), for "
                        "members that do not report it (etcd < 3.6) and whose command line or static pod "
                        "manifest cannot be read on this host; without it, NOSPACE is not disarmed on them")
    p.add_argument("--disarm-threshold", type=float, default=0.9, metavar="RATIO",
                   help="disarm NOSPACE only when every database is below RATIO x quota (default 0.9)")
    p.add_argument("--no-disarm", action="store_true", help="leave NOSPACE alarms alone")
    p.add_argument("--dry-run", action="store_true", help="show what would be done; change nothing")
    p.add_argument("--force", action="store_true",
                   help="go on although a member is unhealthy, quorum is lacking or the cluster has one member")
    p.set_defaults(func=cmd_defrag)


def options_from_args(args: argparse.Namespace, environ: Any = None) -> DefragOptions:
    env = os.environ if environ is None else environ
    text = args.rule if args.rule is not None else (AUTO_RULE if args.auto else None)
    rule = compile_rule(text) if text is not None else None
    explicit = getattr(args, "command_timeout", None) is not None or "ETCDCTL_COMMAND_TIMEOUT" in env
    timeout = resolve(args, env, "command_timeout") if explicit else DEFAULT_DEFRAG_TIMEOUT
    assert isinstance(timeout, float)
    if not 0 < args.disarm_threshold <= 1:
        raise UsageError("--disarm-threshold must be in (0, 1]")
    wait = float(args.wait)
    recover = float(args.recover_timeout)
    if timeout <= 0:
        raise UsageError("--command-timeout must be more than 0")
    quota = parse_quota(args.quota_backend_bytes) if args.quota_backend_bytes is not None else None
    manifest = resolve(args, env, "from_manifest")
    return DefragOptions(
        cluster=bool(args.cluster), rule=rule, compact=bool(args.compact), move_leader=bool(args.move_leader),
        wait=wait, defrag_timeout=timeout, recover_timeout=recover, dry_run=bool(args.dry_run),
        force=bool(args.force), continue_on_error=bool(args.continue_on_error),
        db_quota_bytes=quota, disarm=not args.no_disarm, disarm_threshold=float(args.disarm_threshold),
        manifest=Path(str(manifest)) if manifest else DEFAULT_MANIFEST, setting_names=CLI_SETTINGS,
    )


def _size(n: int | None) -> str:
    return humanize_bytes(n) if n is not None else "-"


def render(out: Output, report: DefragReport) -> None:
    if out.is_json:
        out.json(report.as_json())
        return
    rows = []
    for m in report.members:
        in_use = m.db_size_in_use_after if m.db_size_in_use_after is not None else m.db_size_in_use_before
        rows.append([
            m.endpoint, m.name or (f"{m.member_id:x}" if m.member_id else ""), str(m.was_leader).lower(),
            _size(m.db_size_before), _size(m.db_size_after), _size(in_use),
            f"{m.took:.2f}s" if m.took is not None else "-", m.outcome.value,
        ])
    if report.dry_run:
        out.line("[dry run] nothing was changed")
    out.table(HEADERS, rows)
    for m in report.members:
        if m.detail:
            out.line(f"{m.name or m.endpoint}: {m.detail}")
    if report.compacted_revision is not None:
        out.line(f"compacted the history up to revision {report.compacted_revision}")
    names = {m.member_id: m.name for m in report.members if m.name}
    for mv in report.leader_moves:
        out.line(f"moved leadership from {names.get(mv.from_id, f'{mv.from_id:x}')} to "
                 f"{names.get(mv.to_id, f'{mv.to_id:x}')} in {mv.took:.2f}s")
    for a in report.alarms_disarmed:
        out.line(f"disarmed alarm {a.alarm} of member {a.member_id:x}")
    for a in report.alarms_left:
        out.line(f"alarm still active: {a.alarm} on member {a.member_id:x}")
    for n in report.notes:
        out.line(f"note: {n}")
    if report.stopped_reason:
        out.line(f"stopped: {report.stopped_reason}")


def cmd_defrag(args: argparse.Namespace, out: Output) -> int:
    options = options_from_args(args)

    def progress(e: DefragEvent) -> None:
        out.info(f"{e.endpoint}: {e.message}" if e.endpoint else e.message)

    options.on_event = progress

    async def go(c: EtcdClient) -> DefragReport:
        return await rolling_defrag(c, options)

    report = with_client(args, out, go)
    render(out, report)
    if report.ok:
        if not report.dry_run and not out.is_json:
            out.info("The defragmentation is successful.")
        return EXIT_OK
    failed = ", ".join(f"{m.endpoint} ({m.outcome.value})" for m in report.failures)
    alarms = sorted({a.alarm for a in report.alarms_left})
    reasons = [r for r in (f"failed members: {failed}" if failed else "",
                           report.stopped_reason or "",
                           f"{' and '.join(alarms)} alarm still active" if alarms else "",
                           "; ".join(report.alarm_blockers)) if r]
    out.error("defragmentation incomplete: " + "; ".join(reasons))
    return EXIT_FAILED
