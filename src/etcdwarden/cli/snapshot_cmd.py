"""``etcdwarden snapshot status|verify|inspect|get|diff``: offline snapshot tools (no etcd needed).

Inputs may be ``.db`` (with or without the sha256 trailer), ``.db.zst``, or age-encrypted
(``.age``, give ``--identity FILE``). ``status``, ``verify`` and ``inspect`` also take a backup: a
manifest, a backup directory or any repository URL (``s3://``, ``gs://``, ``az://``, ``file://``) with
``--id TS`` or its newest backup (``verify``: every backup); a backup in an object store is
fetched, verified on the way down, into a private directory in ``--temp-dir`` (default: the current
directory; never the system temp dir) and removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etcdwarden.cli.output import Output, humanize_bytes
from etcdwarden.cli.repo_options import repo_opts, repository_options
from etcdwarden.errors import UsageError
from etcdwarden.snapshot.source import open_snapshot

if TYPE_CHECKING:
    from etcdwarden.snapshot.verify import SnapshotReport

# the readers are imported in the handlers: registering the command costs the CLI no start-up time

_VALUE_WIDTH = 60


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("snapshot", help="offline snapshot tools: status, verify, inspect, get, diff",
                       description="Read etcd snapshot files offline (no etcd server or binary needed).")
    snap = p.add_subparsers(dest="snapshot_command", metavar="SUBCOMMAND", parser_class=type(p))
    snap.required = True

    def identity(q: argparse.ArgumentParser) -> None:
        q.add_argument("--identity", metavar="FILE", help="age identity file to decrypt .age inputs")

    def backup_input(q: argparse.ArgumentParser, which: str) -> None:
        q.add_argument("--id", dest="backup_id", metavar="TS",
                       help=f"the backup of this timestamp in a backup directory or repository (default: {which})")
        q.add_argument("--temp-dir", metavar="DIR",
                       help="where a backup fetched from an object store, and decoded copies, are kept while in use "
                            "(a private 0700 directory made there, removed afterwards; default: the current "
                            "directory, never the system temp dir)")
        repo_opts(q)

    where = "FILE|DIR|URL"
    q = snap.add_parser("status", parents=parents, help="hash, revision, total keys and size (like etcdutl)")
    q.add_argument("path", metavar=where, help="snapshot file, manifest, backup directory or repository URL")
    identity(q)
    backup_input(q, "the newest backup")
    q.set_defaults(func=cmd_status)

    q = snap.add_parser("verify", parents=parents,
                        help="check a snapshot (sha256 trailer, pages, values), a backup, or every backup of a "
                             "directory or repository")
    q.add_argument("path", metavar=where, help="snapshot file, manifest, backup directory or repository URL")
    identity(q)
    q.add_argument("--skip-hash-check", action="store_true",
                   help="accept a snapshot without the sha256 trailer (a raw member/snap/db copy): only its "
                        "structure is checked (like etcdutl's flag; a trailer that is present is still checked)")
    backup_input(q, "every backup")
    q.set_defaults(func=cmd_verify)

    q = snap.add_parser("inspect", parents=parents, help="list the keys of a snapshot")
    q.add_argument("path", metavar=where, help="snapshot file, manifest, backup directory or repository URL")
    q.add_argument("--prefix", default="", help="only keys starting with this prefix")
    q.add_argument("--keys-only", action="store_true", help="omit values")
    q.add_argument("--rev", type=int, default=None, help="show the key space at this revision")
    identity(q)
    backup_input(q, "the newest backup")
    q.set_defaults(func=cmd_inspect)

    q = snap.add_parser("get", parents=parents, help="one key and its value (JSON pretty-printed, Kubernetes objects "
                        "and encrypted values named; -o writes the value byte-exact)",
                        description="Print one key of a snapshot as of its latest revision (or --rev R): JSON values "
                        "pretty-printed, protobuf-encoded Kubernetes objects (k8s\\x00 envelope) shown with their "
                        "apiVersion and kind, encrypted values (k8s:enc:...) named by provider and key. -o FILE "
                        "writes the value byte-exact (mode 0600, atomically). A missing key exits 1.")
    q.add_argument("file", metavar="FILE")
    q.add_argument("wanted_key", metavar="KEY", help="the exact key, e.g. /registry/secrets/default/db-password")
    q.add_argument("--rev", type=int, default=None, help="the key as of this revision (default: the latest)")
    q.add_argument("-o", "--output", metavar="FILE", help="write the value, byte-exact, to FILE (0600, written "
                   "atomically; an existing FILE is refused)")
    identity(q)
    q.set_defaults(func=cmd_get)

    q = snap.add_parser("diff", parents=parents, help="keys added, changed and deleted between two snapshots")
    q.add_argument("a", metavar="A")
    q.add_argument("b", metavar="B")
    q.add_argument("--prefix", default="", help="only keys starting with this prefix")
    identity(q)
    q.set_defaults(func=cmd_diff)


def _options(args: argparse.Namespace, location: str) -> Any:
    from etcdwarden.restore.source import is_remote

    return repository_options(args) if is_remote(location) else None


def _local_file(location: str) -> Path | None:
    """The path ``location`` names when it is a path or a ``file://`` URL (``None``: an object store URL).

    A plain path (the common case) is told without loading the repository and manifest machinery:
    pydantic's models cost ~0.1 s of start-up, a third of ``snapshot status`` on a 0.5 GB snapshot."""
    if location.lower().startswith("file://"):
        from etcdwarden.restore.source import local_path

        return local_path(location)
    return None if "://" in location else Path(location)


@contextlib.contextmanager
def _plain_snapshot(args: argparse.Namespace, out: Output) -> Iterator[Path]:
    """The input as a plain database file: a snapshot file as given, or a backup's snapshot (fetched if remote)."""
    from etcdwarden.format.names import Kind, parse

    temp = Path(args.temp_dir) if args.temp_dir else None
    location: str = args.path
    path = _local_file(location)
    if path is not None and args.backup_id is None and path.is_file():
        n = parse(path.name)
        if n is None or n.temp or n.kind is not Kind.MANIFEST:
            with open_snapshot(path, identity=args.identity, work_dir=temp) as plain:
                yield plain
            return
    from etcdwarden.restore.source import find_backup, stage_dir
    with find_backup(location, args.backup_id, args.identity, options=_options(args, location),
                     stage_near=stage_dir(temp), resources=False) as b:
        for note in b.notes:
            out.warn(note)
        out.info(f"backup {b.timestamp}: {b.url or b.snapshot}")
        work = b.directory if b.url is not None else temp
        with open_snapshot(b.snapshot, identity=args.identity, work_dir=work) as plain:
            yield plain


def _cpus() -> int:
    """The CPUs this process may run on (at most 8): how many processes walk a large snapshot's key bucket."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from etcdwarden.snapshot.status import db_status

    with _plain_snapshot(args, out) as plain:
        st = db_status(plain, workers=_cpus())
    if out.is_json:  # byte-identical to `etcdutl snapshot status -w json`
        out.line(json.dumps(st.as_json(), separators=(",", ":")))
    else:
        out.table(["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
                  [[f"{st.hash:x}", st.revision, st.total_key, humanize_bytes(st.total_size)]])
    return 0


def _snapshot_line(r: SnapshotReport) -> str:
    st = r.status
    line = (f"{r.path}: ok (sha256 {r.sha256}, revision {st.revision}, {st.total_key} keys, "
            f"{humanize_bytes(st.total_size)}, {r.pages} pages checked)")
    return "; ".join([line, *r.notes])


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    from etcdwarden.restore.source import verify_location
    from etcdwarden.snapshot.verify import BackupReport

    report = verify_location(args.path, args.backup_id, Path(args.identity) if args.identity else None,
                             bool(args.skip_hash_check), options=_options(args, args.path),
                             temp_dir=Path(args.temp_dir) if args.temp_dir else None)
    if out.is_json:
        out.json(report.as_json())
    elif isinstance(report, BackupReport):
        for b in report.backups:
            out.line(f"backup {b['timestamp']}: ok ({', '.join(b['files'])})")
        for s in report.snapshots:
            out.line(_snapshot_line(s))
        for n in report.notes:
            out.line(f"note: {n}")
    else:
        out.line(_snapshot_line(report))
    return 0


def _show(data: bytes) -> str:
    text = data.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 3] + "..."


def cmd_inspect(args: argparse.Namespace, out: Output) -> int:
    from etcdwarden.snapshot.inspect import read_keys

    if args.rev is not None and args.rev < 1:
        raise UsageError("--rev must be a positive revision")
    with _plain_snapshot(args, out) as plain:
        ks = read_keys(plain, prefix=args.prefix.encode(), rev=args.rev, keys_only=args.keys_only)
    if out.is_json:
        out.json(ks.as_json(keys_only=args.keys_only))
    elif args.keys_only:
        out.table(["KEY"], [[_show(kv.key)] for kv in ks.kvs])
    else:
        out.table(["KEY", "CREATE REV", "MOD REV", "VERSION", "LEASE", "VALUE"],
                  [[_show(kv.key), kv.create_revision, kv.mod_revision, kv.version,
                    f"{kv.lease:x}" if kv.lease else "", _show(kv.value)] for kv in ks.kvs])
    return 0


def cmd_get(args: argparse.Namespace, out: Output) -> int:
    import base64
    from pathlib import Path

    from etcdwarden.fsutil import atomic_write
    from etcdwarden.snapshot.get import get_key, key_text

    if args.rev is not None and args.rev < 1:
        raise UsageError("--rev must be a positive revision")
    target = Path(args.output) if args.output else None
    if target is not None and (target.exists() or target.is_symlink()):
        raise UsageError(f"-o {target}: the file exists; remove it or choose another path (nothing is overwritten)")
    with open_snapshot(args.file, identity=args.identity) as plain:
        found = get_key(plain, args.wanted_key.encode(), args.rev, name=args.file)
    kv, info = found.kv, found.info
    if target is not None:
        atomic_write(target, kv.value, 0o600)
    if out.is_json:
        doc: dict[str, Any] = {
            "header": {"revision": found.revision}, "latest_revision": found.latest_revision,
            "compact_revision": found.compact_revision, "key": base64.b64encode(kv.key).decode(),
            "create_revision": kv.create_revision, "mod_revision": kv.mod_revision, "version": kv.version,
            "lease": kv.lease, "value": base64.b64encode(kv.value).decode(), "value_info": info.as_json()}
        if info.kind == "json":
            doc["document"] = info.document
        if target is not None:
            doc["written_to"] = str(target)
        out.json(doc)
        return 0
    out.line(f"key:             {key_text(kv.key)}")
    out.line(f"revision:        {found.revision} (latest {found.latest_revision}"
             + (f", compacted at {found.compact_revision})" if found.compact_revision else ")"))
    out.line(f"create/mod rev:  {kv.create_revision} / {kv.mod_revision}, version {kv.version}"
             + (f", lease {kv.lease:x}" if kv.lease else ""))
    out.line(f"value:           {info.summary()}")
    if target is not None:
        out.info(f"wrote the value ({len(kv.value)} bytes, byte-exact) to {target}")
    elif info.kind == "json":
        out.line(json.dumps(info.document, indent=2, ensure_ascii=False))
    elif info.kind == "text":
        out.line(kv.value.decode("utf-8"))
    else:
        out.info("the value is not text: write it byte-exact with -o FILE")
    return 0


def cmd_diff(args: argparse.Namespace, out: Output) -> int:
    from etcdwarden.snapshot.diff import diff_snapshots, key_text

    with contextlib.ExitStack() as stack:
        a = stack.enter_context(open_snapshot(args.a, identity=args.identity))
        b = stack.enter_context(open_snapshot(args.b, identity=args.identity))
        d = diff_snapshots(a, b, prefix=args.prefix.encode())
    if out.is_json:
        out.json(d.as_json())
    else:
        rows = [[change, key_text(k)] for change, keys in (("added", d.added), ("changed", d.changed),
                                                          ("deleted", d.deleted)) for k in keys]
        out.table(["CHANGE", "KEY"], rows)
        out.info(f"{len(d.added)} added, {len(d.changed)} changed, {len(d.deleted)} deleted "
                 f"(revision {d.revision_a} -> {d.revision_b})")
    return 0
