"""``demo``: the whole cycle on an embedded local 3-member etcd cluster.

Starts three etcd processes on free loopback ports in a temporary directory, writes sample
Kubernetes-like data, shows ``endpoint status`` and ``endpoint health``, takes a verified backup and
shows its ``snapshot status``, and stops every process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from etcdwarden.backup.run import BackupOptions, take_backup
from etcdwarden.cli.endpoint_cmd import STATUS_HEADERS, status_row
from etcdwarden.cli.output import Output, humanize_bytes
from etcdwarden.errors import EXIT_FAILED, EXIT_OK
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.inspect import health_all, quorum, status_all
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.local.sample import fill
from etcdwarden.snapshot.status import db_status


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", parents=parents, help="run the whole cycle on a local 3-member cluster")
    p.add_argument("--keys", type=int, default=2000, help="sample keys to write (default 2000)")
    p.add_argument("--workdir", help="keep the cluster's files here instead of a temp dir")
    p.set_defaults(func=cmd_demo)


async def _show(cluster: LocalCluster, keys: int, out: Output, backups: Path) -> bool:
    cfg = ClientConfig.from_strings(cluster.endpoints)
    async with EtcdClient(cfg) as c:
        rev = await fill(c, keys)
        out.line(f"wrote {keys} Kubernetes-like keys under /registry (revision {rev})")
        out.line("\n$ etcdwarden endpoint status --cluster")
        sts = await status_all(c, list(cfg.endpoints))
        out.table(STATUS_HEADERS, [status_row(s) for s in sts])
        out.line("\n$ etcdwarden endpoint health --cluster")
        hs = await health_all(c, list(cfg.endpoints))
        q = await quorum(c, hs)
        out.table(["ENDPOINT", "HEALTH", "TOOK", "ERROR"],
                  [[h.endpoint.raw, str(h.healthy).lower(), f"{h.took * 1000:.3f}ms", h.error or ""] for h in hs])
        out.line(f"quorum: {'yes' if q.has_quorum else 'NO'} ({q.healthy_voters} of {q.voters} voting members healthy)")
        healthy = all(s.ok for s in sts) and all(h.healthy for h in hs) and q.has_quorum
        out.line(f"\n$ etcdwarden backup {backups}")
        result = await take_backup(c, BackupOptions(directory=backups))
        m = result.manifest
        out.line(f"backup {m['timestamp']} from member {m['member']['name']} (revision {m['revision']}, "
                 f"verified: {m['verified']}); files: {', '.join(sorted(m['files']))}")
        out.line(json.dumps(result.status_line, separators=(",", ":")))
        snap = backups / m["snapshot"]["file"]
        out.line(f"\n$ etcdwarden snapshot status {snap.name}")
        st = db_status(snap)
        out.table(["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
                  [[f"{st.hash:x}", st.revision, st.total_key, humanize_bytes(st.total_size)]])
        return healthy


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    with tempfile.TemporaryDirectory(prefix="etcdwarden-demo-") as tmp:
        base = Path(args.workdir) if args.workdir else Path(tmp)
        cluster = LocalCluster(base, size=3)
        out.line(f"starting a local 3-member etcd cluster in {base}")
        try:
            cluster.start()
            out.line("members: " + ", ".join(f"{m.name}={m.client_url} (pid {m.pid})" for m in cluster.members))
            ok = asyncio.run(_show(cluster, int(args.keys), out, base / "backups"))
        finally:
            cluster.stop()
            out.line("stopped every etcd process of the demo cluster")
    if not ok:
        out.error("the demo cluster was not healthy")
        return EXIT_FAILED
    out.line("demo finished: OK")
    return EXIT_OK
