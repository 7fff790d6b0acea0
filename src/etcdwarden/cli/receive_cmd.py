"""``receive REPO``: capture every revision into segments until stopped (continuous backup)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from etcdwarden.backup.receive import FORCE_PLAINTEXT, ReceiveOptions, ReceiveStats, lag_p99, receive
from etcdwarden.cli._async import with_client
from etcdwarden.cli.common import duration_arg, size_arg
from etcdwarden.cli.output import Output
from etcdwarden.cli.repo_options import repo_opts, repository_options
from etcdwarden.errors import EXIT_OK
from etcdwarden.etcd.client import EtcdClient


def _seconds(text: str) -> float:
    """A number of seconds (``5``, ``0.5``) or a duration (``5s``, ``500ms``)."""
    try:
        value = float(text)
    except ValueError:
        value = duration_arg(positive=True)(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 (got {text!r})")
    return value


_seconds.__name__ = "seconds"


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "receive", parents=parents,
        help="capture every revision into segments after a full backup, until stopped (continuous backup)",
        description="Watch the whole keyspace and write every revision, with the time it was seen, into segments "
                    "of REPO (closed every --segment-seconds); a restore can then go to any revision or second of the "
                    "recoverable window (`etcdwarden backups list REPO`). Takes a full backup first when REPO has "
                    "none of this cluster that can be continued. SIGTERM/SIGINT write the open segment, then exit; "
                    "a new run resumes after the last segment written. One receiver per repository.")
    p.add_argument("repo", metavar="REPO", help="repository directory, file:// URL, or s3:// gs:// az:// URL")
    p.add_argument("--segment-seconds", type=_seconds, default=5.0, metavar="SECONDS",
                   help="close (and write) a segment after this long (default 5)")
    p.add_argument("--segment-bytes", type=size_arg(positive=True), default=16 << 20, metavar="SIZE",
                   help="or once it holds this many compressed bytes (default 16MiB)")
    p.add_argument("--full-every", type=duration_arg(positive=True), default=86400.0, metavar="DURATION",
                   help="take a new full backup (and start a new chain) when the base is older than this "
                        "(default 24h)")
    p.add_argument("--lease", type=duration_arg(positive=True), default=30.0, metavar="DURATION",
                   help="how long after its last heartbeat a receiver that vanished still holds REPO (default 30s)")
    p.add_argument("--compress", choices=["zstd"], help="compress the full backups' snapshots")
    p.add_argument("--nice", type=int, default=10, choices=range(0, 20), metavar="N",
                   help="run at this niceness (default 10: etcd on the same host comes first; the receiver "
                        "catches up when it can)")
    p.add_argument("--member", help="member the full backups are taken from (default: a healthy follower)")
    p.add_argument("--force", action="append", default=[], choices=[FORCE_PLAINTEXT], metavar="CHECK",
                   help="override a safety refusal by name: plaintext = receive into a repository that holds "
                   "encrypted backups of this cluster (segments are not encrypted)")
    repo_opts(p)
    p.set_defaults(func=cmd_receive)


def cmd_receive(args: argparse.Namespace, out: Output) -> int:
    opts = ReceiveOptions(repository=str(args.repo), repository_options=repository_options(args),
                          segment_seconds=float(args.segment_seconds), segment_bytes=int(args.segment_bytes),
                          full_every=float(args.full_every), lease_seconds=float(args.lease), compress=args.compress,
                          member=args.member, allow_plaintext=FORCE_PLAINTEXT in args.force)
    stats = ReceiveStats()
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + int(args.nice)))

    def notify(message: str) -> None:
        (out.warn if message.startswith("GAP") else out.info)(message)
        out.err.flush()

    async def go(c: EtcdClient) -> ReceiveStats:
        try:
            return await receive(c, opts, notify, stats)
        finally:
            p99 = lag_p99(stats.lags)
            if stats.base:  # (one that never chose its base has nothing to say: its error says why)
                notify(f"receiver stopped: durable up to revision {stats.durable_revision} of the chain of "
                       f"{stats.base}; {stats.segments} segment(s), {stats.revisions} revision(s) written by this run"
                       + (f", lag p99 {p99:.2f}s" if p99 is not None else "")
                       + (f"; {len(stats.gaps)} gap(s)" if stats.gaps else ""))

    with_client(args, out, go)
    return EXIT_OK
