"""``demo``: the whole cycle on an embedded local 3-member etcd cluster.

Starts three etcd processes on free loopback ports in a temporary directory, writes sample
Kubernetes-like data, shows ``endpoint status`` and ``endpoint health``, takes a verified backup and
shows its ``snapshot status``, drills it (restores it into a throwaway member and proves it against its
manifest: ``backups drill``), starts continuous backup (``receive``: segments every second), writes more
data, damages the data at a known time, restores the whole cluster to one second before the damage
(``restore cluster --to-time``: the full backup plus the captured revisions replayed) with the ``process``
runtime, verifies that every member serves exactly the keys of that moment (the ones written after the
full backup included), and stops every process it started, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from etcdwarden.cli.output import Output, humanize_bytes
from etcdwarden.errors import EXIT_FAILED, EXIT_OK
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.processes import stop_pid


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", parents=parents, help="run the whole cycle on a local 3-member cluster")
    p.add_argument("--keys", type=int, default=2000, help="sample keys to write (default 2000)")
    p.add_argument("--workdir", help="keep the cluster's files here instead of a temp dir")
    p.set_defaults(func=cmd_demo)


def _write_spec(cluster: LocalCluster, path: Path) -> Path:
    """cluster.yaml for the ``process`` runtime, with pid files for the running members."""
    members = []
    for m in cluster.members:
        pid_file = m.data_dir.with_name(f"{m.data_dir.name}.pid")
        pid_file.write_text(f"{m.pid}\n")
        members.append({"name": m.name, "peer_urls": [m.peer_url], "client_urls": [m.client_url],
                        "data_dir": str(m.data_dir), "runtime": "process", "pid_file": str(pid_file)})
    path.write_text(yaml.safe_dump({"members": members}))
    return path


def _stop_runtime_pids(cluster: LocalCluster) -> None:
    for m in cluster.members:
        pid_file = m.data_dir.with_name(f"{m.data_dir.name}.pid")
        text = pid_file.read_text().strip() if pid_file.exists() else ""
        if text.isdigit():
            stop_pid(int(text))


async def _dump(endpoint: str) -> dict[bytes, bytes]:
    from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
    from etcdwarden.etcd.client import EtcdClient
    from etcdwarden.etcd.config import ClientConfig

    async with EtcdClient(ClientConfig.from_strings(endpoint)) as c:
        r = await c.range(pb.RangeRequest(key=b"\x00", range_end=b"\x00"))
        return {kv.key: kv.value for kv in r.kvs}


async def _cycle(cluster: LocalCluster, keys: int, out: Output, base: Path) -> bool:
    from etcdwarden.backup.run import BackupOptions, take_backup
    from etcdwarden.cli.endpoint_cmd import STATUS_HEADERS, status_row
    from etcdwarden.etcd.client import EtcdClient, prefix_end
    from etcdwarden.etcd.config import ClientConfig
    from etcdwarden.inspect import health_all, quorum, status_all
    from etcdwarden.local.sample import fill
    from etcdwarden.repository.window import Target
    from etcdwarden.restore.cluster import ClusterRestoreOptions, restore_cluster
    from etcdwarden.restore.pitr import PointInTime
    from etcdwarden.snapshot.status import db_status

    cfg = ClientConfig.from_strings(cluster.endpoints)
    backups = base / "backups"
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
        if not (all(s.ok for s in sts) and all(h.healthy for h in hs) and q.has_quorum):
            out.error("the demo cluster is not healthy")
            return False

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
        if not await _drill(backups, m["timestamp"], base, out):
            return False
        backed_up = await _dump(cluster.endpoints[0])
        receiving, stats = await _start_receiver(c, backups, out)
        await fill(c, keys // 10, prefix="/registry/configmaps-after-backup", seed=7)
        lease = await c.lease_grant(600)
        await c.put(b"/registry/leases/kube-system/demo", b"holder", lease)
        await asyncio.sleep(1.5)  # nothing written in the second before the damage
        before = await _dump(cluster.endpoints[0])
        later = len(before) - len(backed_up)
        damage_at = dt.datetime.now(dt.UTC)
        out.line(f"\n{later} keys written since the backup (one attached to lease {lease:x}), then at "
                 f"{_rfc3339(damage_at)} damage: deleting every secret and overwriting the configmaps")
        deleted = (await c.delete(b"/registry/secrets/", prefix_end(b"/registry/secrets/"))).deleted
        damaged_rev = await fill(c, keys // 5, prefix="/registry/configmaps-damaged", seed=99)
        after = await _dump(cluster.endpoints[0])
        added = len(after.keys() - before.keys())
        out.line(f"{deleted} secrets deleted and {added} unwanted keys written (up to revision {damaged_rev})")
        await _stop_receiver(receiving, stats, damaged_rev, out)

    spec = _write_spec(cluster, base / "cluster.yaml")
    target = damage_at - dt.timedelta(seconds=1)
    out.line(f"\n$ etcdwarden restore cluster {backups} --spec {spec} --to-time {_rfc3339(target)}")
    point = PointInTime(Target(time=target), progress=out.line)
    report = await restore_cluster(ClusterRestoreOptions(backup=backups, spec_path=spec, point=point),
                                   progress=out.line)
    took = report.seconds_stop_to_healthy
    out.line(f"restored {len(report.members)} members" + (f" (stop to healthy: {took:.1f}s)" if took else ""))
    for w in report.warnings:
        out.warn(w)

    out.line("\nverify: every member serves exactly the keys and values of one second before the damage "
             f"({later} more than the full backup holds)")
    ok = True
    for mem in cluster.members:
        same = await _dump(mem.client_url) == before
        ok = ok and same
        out.line(f"  {mem.name} {mem.client_url}: {'identical' if same else 'DIFFERENT'} ({len(before)} keys)")
    async with EtcdClient(cfg) as c:
        ttl = await c.lease_ttl(lease)
    kept = int(ttl.grantedTTL) == 600
    ok = ok and kept
    out.line(f"  lease {lease:x}: {'restored with its ID and TTL (600s)' if kept else 'MISSING'}")
    moved = sorted(p.name for p in base.iterdir() if ".pre-restore-" in p.name)
    out.line(f"old data directories kept, moved aside: {', '.join(moved)}")
    return ok


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _start_receiver(c: Any, backups: Path, out: Output) -> tuple[asyncio.Task[Any], Any]:
    """Continuous backup into the backup directory (segments every second), as ``etcdwarden receive`` does."""
    from etcdwarden.backup.receive import ReceiveOptions, ReceiveStats, receive

    out.line(f"\n$ etcdwarden receive {backups} --segment-seconds 1   (in the background)")
    stats = ReceiveStats()
    task = asyncio.create_task(receive(c, ReceiveOptions(repository=str(backups), segment_seconds=1.0), None, stats))
    for _ in range(100):
        if stats.base or task.done():
            break
        await asyncio.sleep(0.1)
    if task.done():
        task.result()  # its error
    return task, stats


async def _stop_receiver(task: asyncio.Task[Any], stats: Any, revision: int, out: Output) -> None:
    """Wait until ``revision`` is durable in a segment, then stop the receiver (it writes its open segment)."""
    for _ in range(300):
        if stats.durable_revision >= revision or task.done():
            break
        await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    out.line(f"receiver stopped: every revision up to {stats.durable_revision} is in {stats.segments} segment(s) "
             f"after full backup {stats.base}")


async def _drill(backups: Path, backup_id: str, base: Path, out: Output) -> bool:
    """Prove the backup restorable: restore it into a throwaway member and compare with its manifest."""
    from etcdwarden.restore.drill import DrillOptions, run_drills

    out.line(f"\n$ etcdwarden backups drill {backups} --id {backup_id}")
    report = await asyncio.to_thread(run_drills, backups, DrillOptions(work_dir=base), backup_id=backup_id)
    r = report.outcomes[0].record
    figures = ", ".join(f"{name} {f.measured}" for name, f in r.figures.items()
                        if name in ("revision", "keys", "hash_kv") and f.ok)
    out.line(f"drill {r.result.upper()} in {r.durations.get('total', 0.0):.1f}s: a scratch etcd restored from the "
             f"backup serves what the manifest recorded ({figures}); {r.checks['kubernetes'].detail}")
    if not report.ok:
        out.error("the drill failed: " + "; ".join(r.problems))
    return report.ok


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    with tempfile.TemporaryDirectory(prefix="etcdwarden-demo-") as tmp:
        base = Path(args.workdir) if args.workdir else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        cluster = LocalCluster(base, size=3)
        out.line(f"starting a local 3-member etcd cluster in {base}")
        try:
            cluster.start()
            out.line("members: " + ", ".join(f"{m.name}={m.client_url} (pid {m.pid})" for m in cluster.members))
            ok = asyncio.run(_cycle(cluster, int(args.keys), out, base))
        finally:
            _stop_runtime_pids(cluster)
            cluster.stop()
            out.line("stopped every etcd process of the demo cluster")
    if not ok:
        out.error("the demo did not end with the backed-up data restored")
        return EXIT_FAILED
    out.line("demo finished: OK")
    return EXIT_OK
