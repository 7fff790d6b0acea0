"""``etcdwarden backups list|show|delete|prune|copy REPO``: the catalog of a backup repository.

REPO is a directory (``/var/backups/etcd`` = ``file:///var/backups/etcd``) or an object-store URL
(``s3://bucket/prefix``, ``gs://bucket/prefix``, ``az://container/prefix``). Object-store settings:
``--s3-endpoint``/``--region`` or URL options (``?endpoint=...&region=...``), a ``--repository-config``
YAML/JSON file, and the usual ``AWS_*`` environment variables for credentials.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING, Any

from etcdwarden.cli.common import count_arg, duration_arg, gib_arg, size_arg
from etcdwarden.cli.output import Output, humanize_bytes
from etcdwarden.cli.repo_options import repo_opts, repository_options
from etcdwarden.cli.window_view import chain_state, point, render_plan, render_window
from etcdwarden.errors import EXIT_FAILED, EXIT_OK, UsageError

CORRUPT = "corrupt"  # etcdwarden.repository.catalog.CORRUPT (the handlers import the repository lazily)

# the repository modules are imported in the handlers: registering costs the CLI no start-up time
if TYPE_CHECKING:
    from etcdwarden.repository.base import Repository


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("backups", help="the backups in a repository: list, show, delete, prune, copy, drill",
                       description="Read and manage the catalog of a backup repository (a directory or "
                                   "s3:// gs:// az:// URL).")
    cmds = p.add_subparsers(dest="backups_command", metavar="SUBCOMMAND", parser_class=type(p))
    cmds.required = True

    q = cmds.add_parser("list", parents=parents, help="every backup: time, revision, size, member, state",
                        description="List the backups of a repository from their manifests. VERIFIED says "
                                    "what the manifest claims for a complete backup; with --verify every "
                                    "backup's files are hashed again and compared with the manifest.")
    q.add_argument("repo", metavar="REPO")
    _verify_opt(q)
    repo_opts(q)
    q.set_defaults(func=cmd_list)

    q = cmds.add_parser("show", parents=parents, help="one backup's catalog entry and manifest, or what a restore to "
                                                      "a point (--at) would use")
    q.add_argument("repo", metavar="REPO")
    q.add_argument("id", metavar="ID", nargs="?", help="backup ID (its timestamp, YYYY-MM-DD_HHMMSS)")
    q.add_argument("--at", metavar="REVISION|TIME",
                   help="continuous backup: the base backup, segments and exact revision a restore to this revision "
                        "or RFC 3339 time (2026-12-02T10:15:05Z: every revision seen at or before it) would use")
    _verify_opt(q)
    repo_opts(q)
    q.set_defaults(func=cmd_show)

    q = cmds.add_parser("delete", parents=parents, help="delete one backup (manifest first)")
    q.add_argument("repo", metavar="REPO")
    q.add_argument("id", metavar="ID")
    q.add_argument("--dry-run", action="store_true", help="show what would be deleted")
    q.add_argument("--force", action="store_true", help="allow deleting the newest verified backup")
    repo_opts(q)
    q.set_defaults(func=cmd_delete)

    q = cmds.add_parser("prune", parents=parents, help="apply retention (default: keep the newest 15)",
                        description="Delete verified backups beyond the retention rules (the newest verified "
                                    "backup is never deleted) and failed backups older than the grace period. "
                                    "GiB = 1024^3 bytes. Durations: 90s, 15m, 36h, 7d, 2w; sizes: 500MiB, 10GiB, "
                                    "1.5GB. The daemon's retention keys take the same values (keepLast, maxSizeGiB "
                                    "or maxSize, keepWithin, tiers, minKeep, keepProven, incompleteGrace).")
    q.add_argument("repo", metavar="REPO")
    q.add_argument("--max-number", type=count_arg(1), nargs="?", const=15, metavar="N",
                   help="keep exactly the newest N verified backups (RetentionNumber; 15 if N is omitted)")
    cap = q.add_mutually_exclusive_group()
    cap.add_argument("--max-size-gib", type=gib_arg, nargs="?", const=10 * 1024**3, metavar="G",
                     help="keep the newest verified backups totalling at most G GiB (RetentionSize; 10 if omitted)")
    cap.add_argument("--max-size", type=size_arg(positive=True), metavar="SIZE",
                     help="the same cap as a size with its unit (e.g. 500MiB, 10GiB, 1.5GB)")
    q.add_argument("--keep-within", type=duration_arg(positive=True), metavar="DURATION",
                   help="keep every backup younger than this (e.g. 7d, 36h)")
    for tier in ("hourly", "daily", "weekly", "monthly"):
        q.add_argument(f"--keep-{tier}", type=count_arg(0), default=0, metavar="N",
                       help=f"keep the latest backup of each of the last N {tier[:-2] if tier != 'daily' else 'day'}s")
    q.add_argument("--min-keep", type=count_arg(0), metavar="N",
                   help="never keep fewer than N verified backups (protects against age-based rules when backups "
                        "fail; the newest verified backup is always kept, so 0 and 1 add nothing)")
    q.add_argument("--keep-proven", type=count_arg(0), default=1, metavar="N",
                   help="never delete the newest N backups a restore drill proved (`backups drill`; default 1, "
                        "0: off); where it must choose, retention prefers proven backups anyway")
    q.add_argument("--incomplete-grace", type=duration_arg(), default="24h", metavar="DURATION",
                   help="delete failed/incomplete backups untouched for this long, and abort incomplete "
                        "multipart uploads (s3://) started this long ago (default 24h)")
    q.add_argument("--reverify-after", type=duration_arg(), default="7d", metavar="DURATION",
                   help="before deleting, every backup kept is hashed again against its manifest; a file "
                        "unchanged (size, mtime, ctime, inode; object stores: ETag) since it was last hashed "
                        "is trusted for at most this long (default 7d; 0: always hash)")
    q.add_argument("--max-verify-bytes", type=size_arg(bare_bytes=True), metavar="SIZE",
                   help="the most bytes one run reads to re-prove the backups it keeps (e.g. 20GiB; "
                        "default: no limit for directories, 50GiB for object stores); past it, prune "
                        "deletes nothing and says so")
    q.add_argument("--dry-run", action="store_true", help="show the plan (backups kept are re-proven), delete "
                                                          "nothing")
    q.add_argument("--lock-wait", type=duration_arg(), default=0.0, metavar="DURATION",
                   help="local repositories: wait this long (e.g. 30s) for a running backup to finish")
    repo_opts(q)
    q.set_defaults(func=cmd_prune)

    q = cmds.add_parser("copy", parents=parents,
                        help="copy verified backups, their segments and drill records from SRC to DST (local -> S3)")
    q.add_argument("src", metavar="SRC")
    q.add_argument("dst", metavar="DST")
    q.add_argument("--id", action="append", default=[], metavar="ID", help="only this backup (repeatable)")
    q.add_argument("--dry-run", action="store_true", help="show what would be copied")
    repo_opts(q)
    q.set_defaults(func=cmd_copy)

    from etcdwarden.cli import drill_cmd

    drill_cmd.register(cmds, parents)


def _verify_opt(q: argparse.ArgumentParser) -> None:
    q.add_argument("--verify", action="store_true",
                   help="hash every file of every backup again and compare it with the manifest (reads "
                        "everything; a mismatch shows as corrupt and the command exits 1)")


def _reverify(cat: Any, repo: Repository, only: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """``--verify``: hash every file again (asked for: no cache, no byte budget) of each backup whose
    manifest lists its files (or of backup ``only``); returns (ID -> check, notes)."""
    from etcdwarden.repository.reverify import Verifier

    verifier = Verifier(repo, use_cache=False, unbounded=True)
    for e in cat.entries:
        if e.state in ("complete", "unverified") and only in (None, e.id):
            verifier.check(e)
    verifier.save(o.name for e in cat.entries for o in e.objects)
    return dict(verifier.checks), verifier.notes


def _open(args: argparse.Namespace, location: str, must_exist: bool = True) -> Repository:
    from etcdwarden.repository.base import open_repository
    from etcdwarden.repository.local import LocalRepository

    repo = open_repository(location, repository_options(args))
    if must_exist and isinstance(repo, LocalRepository) and not repo.directory.is_dir():
        raise UsageError(f"{repo.directory}: no such repository directory")
    return repo


def _age(t: dt.datetime) -> str:
    s = int((dt.datetime.now(dt.UTC) - t).total_seconds())
    if s < 0:
        return "future"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    from etcdwarden.repository.catalog import load_catalog
    from etcdwarden.repository.reverify import mark_known_corrupt
    from etcdwarden.repository.uploads import pending_uploads
    from etcdwarden.repository.window import read_window

    checks: dict[str, Any] = {}
    notes: list[str] = []
    with _open(args, args.repo) as repo:
        cat = load_catalog(repo)
        if args.verify:
            checks, notes = _reverify(cat, repo)
        else:
            mark_known_corrupt(repo, cat.entries)
        rows = [e.as_json(repo) for e in reversed(cat.entries)]  # newest first
        uploads, why_not = pending_uploads(repo)
        window = read_window(repo, cat, rehash=bool(args.verify))
    for r in rows:
        if args.verify:
            c = checks.get(r["id"])
            r["rehashed"] = c is not None and c.ok
    corrupt = [e for e in cat.entries if e.state == CORRUPT]
    code = EXIT_FAILED if corrupt and args.verify else EXIT_OK  # a plain listing reports, --verify checks
    if out.is_json:
        out.json({"repository": cat.url, "backups": rows, "unknown_objects": cat.unknown,
                  "incomplete_uploads": [u.as_json() for u in uploads], "incomplete_uploads_note": why_not,
                  "notes": notes, "window": window.as_json()})
        for e in corrupt:
            out.error(f"backup {e.id} is corrupt: {e.problem}")
        return code
    table = []
    for e, r in zip(reversed(cat.entries), rows, strict=True):
        table.append([r["id"], e.time.strftime("%Y-%m-%d %H:%M:%S UTC"), _age(e.time),
                      r["revision"] if r["revision"] is not None else "-", humanize_bytes(r["size"]),
                      r["member"] or "-", "re-hashed" if r.get("rehashed") else "yes" if r["verified"] else "no",
                      ",".join(r["encryption_keys"]) or "-",
                      r["state"], _drill_cell(e), r["where"]])
    out.table(["ID", "TIME", "AGE", "REVISION", "SIZE", "MEMBER", "VERIFIED", "ENCRYPTION KEYS", "STATE", "DRILL",
               "WHERE"], table)
    render_window(out, window)
    for e in cat.entries:
        if not e.good and e.state != CORRUPT:
            out.warn(f"{e.id}: {e.state}: {e.problem}")
        if e.unproven:
            why = e.drill_problem or "; ".join(e.drill.problems[:2] if e.drill is not None else [])
            out.warn(f"{e.id}: unproven: its last restore drill failed ({why}); it is kept, see "
                     f"`etcdwarden backups drill {args.repo} --id {e.id}`")
    for n in notes:
        out.info(n)
    if cat.unknown:
        out.info(f"{len(cat.unknown)} other object(s) in the repository are not backups and are left alone")
    if uploads:
        out.warn(f"{len(uploads)} incomplete upload(s) under {cat.url} (a killed or failed write; their parts "
                 "are stored until aborted): " + ", ".join(f"{u.name} (started {u.initiated.isoformat()[:19]})"
                                                          for u in uploads)
                 + "; `etcdwarden backups prune` aborts them once older than --incomplete-grace (24h)")
    if why_not is not None:
        out.info(why_not)
    if args.verify:
        out.info(f"re-hashed {len(checks)} backup(s) against their manifests: {len(corrupt)} corrupt")
    for e in corrupt:
        out.error(f"backup {e.id} is corrupt: {e.problem}")
    return code


def _show_at(args: argparse.Namespace, out: Output, target: Any) -> int:
    from etcdwarden.repository.window import read_window, resolve

    with _open(args, args.repo) as repo:
        window = read_window(repo, rehash=bool(args.verify))
        plan = resolve(repo, window, target)
        if out.is_json:
            out.json(plan.as_json(repo))
        else:
            render_plan(out, plan, repo)
    return EXIT_OK


def _drill_cell(e: Any) -> str:
    """``backups list``'s DRILL column: passed (and when), unproven (the last drill failed), or - (never)."""
    if e.unproven:
        return "unproven"
    if e.drill is not None:
        return f"passed {_age(e.drill.finished_at)}"
    return "-"


def cmd_show(args: argparse.Namespace, out: Output) -> int:
    from etcdwarden.repository.catalog import load_catalog
    from etcdwarden.repository.reverify import mark_known_corrupt
    from etcdwarden.repository.window import Target, read_window

    if (args.id is None) == (args.at is None):
        raise UsageError("backups show: give a backup ID, or --at REVISION|TIME (what a restore to it would use)")
    if args.at is not None:
        return _show_at(args, out, Target.parse(args.at))
    with _open(args, args.repo) as repo:
        cat = load_catalog(repo)
        e = cat.get(args.id)
        if args.verify:
            _reverify(cat, repo, only=e.id)
        else:
            mark_known_corrupt(repo, cat.entries)
        doc = e.as_json(repo)
        doc["objects"] = [{"name": o.name, "size": o.size, "modified": o.mtime.isoformat()} for o in e.objects]
        newest = cat.newest_good()
        doc["newest_verified"] = newest is not None and newest.id == e.id
        doc["manifest"] = e.manifest.as_json() if e.manifest is not None else None
        window = read_window(repo, cat, rehash=bool(args.verify))
        chain = next((c for c in window.chains if c.base == e.id), None)
        doc["chain"] = chain.as_json() if chain is not None and (chain.segments or chain.broken) else None
    code = EXIT_FAILED if e.state == CORRUPT and args.verify else EXIT_OK
    if out.is_json:
        out.json(doc)
        return code
    doc["drill_result"] = _drill_cell(e)
    for key in ("id", "time", "state", "problem", "verified", "newest_verified", "revision", "member", "cluster_id",
                "db_size", "size", "encryption_keys", "compression", "encryption", "drill_result", "where"):
        val = doc[key]
        if key in ("size", "db_size") and isinstance(val, int):
            val = f"{val} ({humanize_bytes(val)})"
        elif isinstance(val, list):
            val = ", ".join(str(v) for v in val) or "-"
        out.line(f"{key + ':':17}{'-' if val is None else val}")
    if chain is not None and doc["chain"] is not None:
        out.line(f"{'chain:':17}{len(chain.segments)} segment(s), {point(chain.start)} .. {point(chain.end)}; "
                 f"{chain_state(chain)}")
    out.line("objects:")
    for o in doc["objects"]:
        out.line(f"  {o['name']}  {o['size']} bytes  {o['modified']}")
    if e.state == CORRUPT:
        out.error(f"backup {e.id} is corrupt: {e.problem}")
    return code


def cmd_delete(args: argparse.Namespace, out: Output) -> int:
    from etcdwarden.repository.prune import delete_one

    with _open(args, args.repo) as repo:
        entry, names = delete_one(repo, args.id, force=bool(args.force), dry_run=bool(args.dry_run))
        url = repo.url
    verb = "would delete" if args.dry_run else "deleted"
    if out.is_json:
        out.json({"id": entry.id, "state": entry.state, "dry_run": bool(args.dry_run), "objects": names})
    else:
        out.info(f"{verb} backup {entry.id} ({entry.state}) from {url}: {len(names)} object(s)")
        for n in names:
            out.line(n)
    return EXIT_OK


def _retention(args: argparse.Namespace) -> Any:
    from etcdwarden.repository.retention import (
        IncompleteCleanup,
        KeepProven,
        KeepWithin,
        MinKeep,
        RetentionConfig,
        RetentionNumber,
        RetentionSize,
        Tiered,
    )
    from etcdwarden.repository.retention.base import Names

    tiers = {t: getattr(args, f"keep_{t}") for t in ("hourly", "daily", "weekly", "monthly")}
    cap = args.max_size if args.max_size is not None else args.max_size_gib
    names = Names(max_number="--max-number", max_size="--max-size" if args.max_size is not None else "--max-size-gib",
                  keep_within="--keep-within", tier="--keep-{tier}", min_keep="--min-keep",
                  keep_proven="--keep-proven", incomplete_grace="--incomplete-grace")
    return RetentionConfig(
        number=RetentionNumber(args.max_number) if args.max_number is not None else None,
        size=RetentionSize.of_bytes(cap) if cap is not None else None,
        within=KeepWithin(dt.timedelta(seconds=args.keep_within)) if args.keep_within is not None else None,
        tiered=Tiered(**tiers) if any(tiers.values()) else None,
        min_keep=MinKeep(args.min_keep) if args.min_keep is not None else None,
        keep_proven=KeepProven(args.keep_proven) if args.keep_proven else None,
        incomplete=IncompleteCleanup(dt.timedelta(seconds=args.incomplete_grace)),
        names=names,
    )


def cmd_prune(args: argparse.Namespace, out: Output) -> int:
    from etcdwarden.repository.prune import prune
    from etcdwarden.repository.reverify import VerifyPolicy

    config = _retention(args)
    policy = VerifyPolicy(dt.timedelta(seconds=args.reverify_after), args.max_verify_bytes,
                          setting="--max-verify-bytes")
    with _open(args, args.repo) as repo:
        result = prune(repo, config, dry_run=bool(args.dry_run), lock_wait=float(args.lock_wait), verify=policy)
        url = repo.url
    for a in result.plan.alerts:
        if not any(a.startswith(f"backup {i} is corrupt") for i in result.corrupt):
            out.warn(a)
    for n in result.notes:
        out.info(n)
    code = EXIT_FAILED if result.corrupt else EXIT_OK
    if out.is_json:
        out.json({"repository": url, **result.as_json()})
        _report_corrupt(result.corrupt, out)
        return code
    rows: list[list[object]] = [[k, "delete" if not args.dry_run else "would delete", v]
                                for k, v in result.plan.delete.items()]
    rows += [[k, "keep", v + (f" (re-proven: {result.proven[k]})" if k in result.proven else "")]
             for k, v in result.plan.keep.items()]
    rows += [[k, "leave", v] for k, v in result.plan.leave.items()]
    rows.sort(key=lambda r: str(r[0]), reverse=True)
    rows += [[f"upload {u.name}", "would abort" if args.dry_run else "abort",
              f"incomplete upload started {u.initiated.isoformat()[:19]}, older than --incomplete-grace"]
             for u in result.uploads_aborted]
    rows += [[f"upload {k}", "leave", v] for k, v in result.uploads_left.items()]
    out.table(["ID", "ACTION", "REASON"], rows)
    verb = "would delete" if args.dry_run else "deleted"
    aborted = f"; {'would abort' if args.dry_run else 'aborted'} {len(result.uploads_aborted)} incomplete " \
        "upload(s)" if result.uploads_aborted else ""
    out.info(f"{verb} {len(result.plan.delete)} backup(s) from {url}; {len(result.plan.keep)} verified kept{aborted}")
    _report_corrupt(result.corrupt, out)
    return code


def _report_corrupt(corrupt: dict[str, str], out: Output) -> None:
    for backup_id, problem in corrupt.items():
        out.error(f"backup {backup_id} is corrupt: {problem}. It was not counted and not deleted; the next good "
                  "backup was kept in its place. Inspect it, then remove it with `etcdwarden backups delete`")


def cmd_copy(args: argparse.Namespace, out: Output) -> int:
    from etcdwarden.repository.transfer import copy_backups

    with _open(args, args.src) as src, _open(args, args.dst, must_exist=False) as dst:
        report = copy_backups(src, dst, ids=args.id, dry_run=bool(args.dry_run))
        where = f"{src.url} -> {dst.url}"
    if out.is_json:
        out.json({"from": src.url, "to": dst.url, "dry_run": bool(args.dry_run), **report.as_json()})
        return EXIT_OK
    verb = "would copy" if args.dry_run else "copied"
    for i in report.copied:
        out.line(f"{verb} {i}")
    for i, why in report.skipped.items():
        out.line(f"skipped {i}: {why}")
    for note in report.notes:
        out.warn(note)
    filed = "".join(f", {len(items)} {what}" for items, what in ((report.segments, "segment(s)"),
                                                                  (report.drills, "drill record(s)")) if items)
    out.info(f"{where}: {verb} {len(report.copied)} backup(s){filed}, {humanize_bytes(report.bytes)}; "
             f"{len(report.skipped)} skipped")
    return EXIT_OK


__all__ = ["register"]
