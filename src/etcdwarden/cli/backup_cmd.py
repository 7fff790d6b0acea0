"""``backup DIR``: cluster-backup.sh done right (one member, verified, manifest last)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from etcdwarden.backup.run import BackupOptions, BackupResult, take_backup
from etcdwarden.cli._async import with_client
from etcdwarden.cli.common import duration_arg
from etcdwarden.cli.output import Output, humanize_bytes
from etcdwarden.cli.repo_options import repo_opts, repository_options
from etcdwarden.errors import EXIT_OK
from etcdwarden.etcd.client import EtcdClient


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("backup", parents=parents, help="back up the cluster into DIR (snapshot + resources + manifest)")
    p.add_argument("directory", metavar="DIR|URL",
                   help="backup directory (created 0700 if missing), file:// URL, or s3:// gs:// az:// repository")
    p.add_argument("--resources", nargs="+", default=[], metavar="PATH",
                   help="files/directories a restore needs (static pod manifests, PKI, EncryptionConfiguration)")
    p.add_argument("--resources-dir", metavar="DIR", help="store the resources bundle here instead of DIR")
    p.add_argument("--compress", choices=["zstd"], help="compress the snapshot (streamed, .db.zst)")
    p.add_argument("--encrypt-to", action="append", default=[], metavar="RECIPIENT",
                   help="age recipient (age1...) or SSH public key; repeatable (.age files)")
    p.add_argument("--member", help="member to snapshot (name, hex ID or endpoint); default: a healthy follower")
    p.add_argument("--release", help="release label to record (restore refuses another release)")
    p.add_argument("--encryption-config", metavar="PATH",
                   help="the kube-apiserver EncryptionConfiguration: its key names are recorded in the manifest, "
                        "the file is bundled with the resources, and a migration in progress refuses the backup")
    p.add_argument("--verify", choices=["full", "hash"], default="full",
                   help="full: sha256 trailer + bbolt structure + status (default); hash: trailer only")
    p.add_argument("--lock-wait", type=duration_arg(), default=0.0, metavar="DURATION",
                   help="wait this long (e.g. 30s, 5m) for another backup into DIR to finish (default: fail at once)")
    p.add_argument("--force", action="store_true",
                   help="back up even without quorum, with no healthy member, or with a CORRUPT alarm")
    repo_opts(p)
    p.set_defaults(func=cmd_backup)


def _progress(out: Output) -> Any:
    if not out.err.isatty():
        return None
    last = [0.0]

    def show(member: str, got: int, total: int) -> None:
        pct = 100.0 * got / total if total else 0.0
        if pct - last[0] >= 1 or got >= total:
            last[0] = pct
            out.err.write(f"\rsnapshot from {member}: {humanize_bytes(got)} / {humanize_bytes(total)} ({pct:.0f}%)")
            if got >= total:
                out.err.write("\n")
            out.err.flush()

    return show


def cmd_backup(args: argparse.Namespace, out: Output) -> int:
    opts = BackupOptions(
        directory=str(args.directory),
        resources=[Path(p) for p in args.resources],
        resources_dir=Path(args.resources_dir) if args.resources_dir else None,
        compress=args.compress,
        recipients=list(args.encrypt_to),
        member=args.member,
        force=bool(args.force),
        release=args.release,
        verify=args.verify,
        lock_wait=float(args.lock_wait),
        encryption_config=Path(args.encryption_config) if args.encryption_config else None,
        repository_options=repository_options(args),
    )
    progress = _progress(out)

    async def go(c: EtcdClient) -> BackupResult:
        return await take_backup(c, opts, progress)

    result = with_client(args, out, go)
    for w in result.warnings:
        out.warn(w)
    m = result.manifest
    out.info(f"backup {m['timestamp']} of cluster {m['cluster_id']} from member {m['member']['name']} "
             f"(revision {m['revision']}) written; manifest {result.location}")
    if out.is_json:
        out.json(m)
    else:
        out.line(json.dumps(result.status_line, separators=(",", ":")))
    sys.stdout.flush()
    return EXIT_OK
