"""Point-in-time restore speed and memory: replay of N revisions vs sequential single-put Txns, side by side.

Usage: python -m bench.replay [--revisions 200000] [--value-size 1024] [--keys 5000] [--workdir DIR]

Starts a 1-member loopback cluster holding --keys keys, takes a full backup with etcdwarden, then writes a
chain of segments after it holding --revisions revisions (synthetic, each a put of one of the keys, one in
ten a Txn of three puts, one in fifty a delete; segments of 10,000 revisions) and runs, in one run:

* the ceiling: sequential single-put Txns from Python gRPC (one in flight) into a fresh ``--unsafe-no-fsync``
  etcd started the way the replay starts its scratch member, N revisions of the same values;
* ``etcdwarden restore member REPO --to-revision END`` (base + every segment): the replay's own rate
  (revisions/s, from its progress line), the whole command's wall time and peak RSS;
* ``etcdwarden restore member REPO --no-segments`` (the full backup alone) and ``etcdutl snapshot restore``
  of the base snapshot, the reference for the whole restore.

* pipelining, measured: Txns kept 2 or 4 in flight, each guarded by the previous revision so that one applied
  out of order changes nothing and is sent again. etcd does not keep the order of concurrent requests on one
  connection: most lose the race, so the replay sends one Txn at a time.

Targets (issue 13): replay ≥ 1,200 revisions/s for 200,000 revisions, peak RSS ≤ 128 MiB.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.common import fill_bytes, timed
from etcdwarden.binaries import find_binary
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2_grpc as rpc
from etcdwarden.format.names import BackupNames
from etcdwarden.format.segment import Event, RevisionRecord, SegmentEncoder, SegmentManifest, dump_segment_manifest
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.restore.replay import REPLAY_ETCD_ARGS
from etcdwarden.restore.scratch_member import ScratchMember

PER_SEGMENT = 10_000


def write_chain(repo: Path, revisions: int, value_size: int, keys: int) -> int:
    """Synthetic segments after the backup in ``repo``; the last revision."""
    manifest = next(repo.glob("backup_*.json"))
    doc = json.loads(manifest.read_text())
    base, cluster_id = doc["timestamp"], doc["cluster_id"]
    rev = int(doc["status"]["revision"] if doc.get("status") else doc["revision"])
    previous = doc["files"][doc["snapshot"]["file"]]["sha256"]
    t0 = dt.datetime.fromisoformat(doc["created_at"])
    names = BackupNames(base)
    live: set[int] = set(range(keys))
    end = rev + revisions
    while rev < end:
        enc = SegmentEncoder(rev + 1)
        chunks: list[bytes] = []
        for _ in range(min(PER_SEGMENT, end - rev)):
            rev += 1
            when = t0 + dt.timedelta(microseconds=500 * (rev - enc.first_revision + 1))
            k = rev % keys
            value = os.urandom(value_size // 2).hex().encode()  # as compressible as a real value (about 2x)
            if rev % 50 == 0 and k in live:
                events: tuple[Event, ...] = (Event("delete", f"/registry/bench/{k:09d}".encode(), mod_revision=rev),)
                live.discard(k)
            elif rev % 10 == 0:
                events = tuple(Event("put", f"/registry/txn/{rev}/{i}".encode(), value, rev, rev, 1)
                               for i in range(3))
            else:
                events = (Event("put", f"/registry/bench/{k:09d}".encode(), value, 0, rev, 0),)
                live.add(k)
            chunks.append(enc.add(RevisionRecord(rev, when, events)))
        chunks.append(enc.finish())
        data = b"".join(chunks)
        assert enc.first_time is not None and enc.last_time is not None
        m = SegmentManifest(base=base, cluster_id=cluster_id, file=names.segment(enc.first_revision),
                            first_revision=enc.first_revision, last_revision=enc.last_revision,
                            revisions=enc.revisions, events=enc.events, first_time=enc.first_time,
                            last_time=enc.last_time, size=len(data), sha256=enc.sha256, previous_sha256=previous,
                            created_at=dt.datetime.now(dt.UTC))
        (repo / m.file).write_bytes(data)
        (repo / m.name).write_bytes(dump_segment_manifest(m))
        previous = m.sha256
        t0 = enc.last_time
    return end


def sequential_puts(work: Path, revisions: int, value_size: int, keys: int) -> float:
    """Revisions/s of sequential single-put Txns into a fresh --unsafe-no-fsync member (one in flight)."""
    data = work / "ceiling.etcd"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(mode=0o700)
    member = ScratchMember(data, work / "ceiling.log", name="ceiling", force_new_cluster=False,
                           extra_args=REPLAY_ETCD_ARGS)
    member.start()
    try:
        channel = grpc.insecure_channel(member.client_url.split("://", 1)[1])
        kv = rpc.KVStub(channel)
        value = os.urandom(value_size // 2).hex().encode()[:value_size]
        begin = time.monotonic()
        for i in range(revisions):
            op = pb.RequestOp(request_put=pb.PutRequest(key=f"/registry/bench/{i % keys:09d}".encode(), value=value))
            kv.Txn(pb.TxnRequest(success=[op]), timeout=60)
        seconds = time.monotonic() - begin
        channel.close()
    finally:
        member.stop()
    return revisions / seconds


@dataclass
class Monitored:
    wall: float
    stderr: str
    replay_rss: float  # MiB, while the replay runs (between the plan line and the "replayed N revisions" line)
    peak_rss: float
    peak_anon: float


def _status(pid: int) -> dict[str, float]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024
    except OSError:
        pass
    return out


def _child(pid: int) -> int | None:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def monitored(cmd: list[str]) -> Monitored:
    """Run ``cmd`` under GNU time (its true peak RSS), sampling its RSS (total and anonymous) every 50 ms and
    which phase it is in."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-") as report:
        p = subprocess.Popen(["/usr/bin/time", "-q", "-f", "%M", "-o", report.name, *cmd],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(p.stderr or []), daemon=True)
        reader.start()
        start = time.monotonic()
        replay = anon = 0.0
        child: int | None = None
        while p.poll() is None:
            child = child or _child(p.pid)
            st = _status(child) if child else {}
            text = "".join(lines)
            if "point-in-time restore to" in text and "revisions (" not in text:
                replay = max(replay, st.get("VmRSS", 0.0))
            anon = max(anon, st.get("RssAnon", 0.0))
            time.sleep(0.05)
        wall = time.monotonic() - start
        reader.join(5)
        peak = int(report.read().split()[-1]) / 1024
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:6])} failed: {''.join(lines)[-2000:]}")
    return Monitored(wall, "".join(lines), replay, peak, anon)


def pipelined(work: Path, revisions: int, value_size: int, window: int) -> tuple[float, float]:
    """Revisions/s and the share of Txns that lost the race, with ``window`` Txns in flight, each guarded by the
    previous revision (``mod_revision(previous key) == r - 1``: it applies only in order, else changes nothing
    and is sent again). Measured to decide whether the replay may pipeline: it may not (see the module doc)."""
    data = work / f"pipeline{window}.etcd"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(mode=0o700)
    member = ScratchMember(data, work / "pipeline.log", name="pipeline", force_new_cluster=False,
                           extra_args=REPLAY_ETCD_ARGS)
    member.start()
    try:
        channel = grpc.insecure_channel(member.client_url.split("://", 1)[1])
        kv = rpc.KVStub(channel)
        value = os.urandom(value_size // 2).hex().encode()[:value_size]
        base = int(kv.Range(pb.RangeRequest(key=b"/")).header.revision)

        def request(i: int) -> pb.TxnRequest:
            guard = [pb.Compare(key=b"/p/%d" % ((i - 1) % 1000), target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                                mod_revision=base + i)] if i else []
            return pb.TxnRequest(compare=guard, success=[pb.RequestOp(request_put=pb.PutRequest(
                key=b"/p/%d" % (i % 1000), value=value))])

        inflight: collections.deque[tuple[int, Any]] = collections.deque()
        nxt = lost = 0
        begin = time.monotonic()
        while nxt < revisions or inflight:
            while len(inflight) < window and nxt < revisions:
                inflight.append((nxt, kv.Txn.future(request(nxt))))
                nxt += 1
            i, fut = inflight.popleft()
            resp = fut.result()
            if resp.succeeded:
                assert resp.header.revision == base + i + 1
                continue
            # applied out of order: nothing changed; every later one in flight fails too. Drain them, then go
            # on from this one, in order
            lost += 1 + len(inflight)
            for _j, f in inflight:
                assert not f.result().succeeded
            inflight.clear()
            resp = kv.Txn(request(i))
            assert resp.succeeded and resp.header.revision == base + i + 1
            nxt = i + 1
        seconds = time.monotonic() - begin
        channel.close()
    finally:
        member.stop()
    return revisions / seconds, lost / revisions


def restore_cmd(repo: Path, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "etcdwarden", "restore", "member", str(repo), "--data-dir", str(data_dir),
            "--name", "m0", "--initial-cluster", "m0=http://127.0.0.1:2380", *extra]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--revisions", type=int, default=200_000)
    ap.add_argument("--value-size", type=int, default=1024)
    ap.add_argument("--keys", type=int, default=5000)
    ap.add_argument("--base-mb", type=int, default=0,
                    help="also fill the base with this many MB of 64 KiB values (the full backup's size)")
    ap.add_argument("--ceiling-revisions", type=int, default=0,
                    help="revisions of the sequential-put ceiling runs (default: --revisions)")
    ap.add_argument("--workdir")
    a = ap.parse_args()
    base = Path(a.workdir or tempfile.mkdtemp(prefix="etcdwarden-bench-"))
    repo = base / "repo"
    cluster = LocalCluster(base / "cluster", size=1, extra_args=("--quota-backend-bytes", str(8 << 30)))
    cluster.start()
    try:
        channel = grpc.insecure_channel(cluster.endpoints[0].split("://", 1)[1])
        kv = rpc.KVStub(channel)
        value = os.urandom(a.value_size // 2).hex().encode()[:a.value_size]
        for start in range(0, a.keys, 100):
            kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(
                key=f"/registry/bench/{k:09d}".encode(), value=value))
                for k in range(start, min(a.keys, start + 100))]))
        channel.close()
        if a.base_mb:
            fill_bytes(cluster, a.base_mb << 20)
        r = subprocess.run([sys.executable, "-m", "etcdwarden", "backup", str(repo), "--endpoints",
                            cluster.endpoints[0]], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise SystemExit(f"backup failed: {r.stderr}")
    finally:
        cluster.stop()
    began = time.monotonic()
    end = write_chain(repo, a.revisions, a.value_size, a.keys)
    segs = sum(f.stat().st_size for f in repo.glob("segment_*.zst"))
    print(f"chain: {a.revisions} revisions after the base, {len(list(repo.glob('segment_*.zst')))} segments, "
          f"{segs / 1e6:.1f} MB compressed (written in {time.monotonic() - began:.0f}s); load average "
          f"{os.getloadavg()[0]:.2f}")

    n_ceiling = a.ceiling_revisions or a.revisions
    ceiling = sequential_puts(base, n_ceiling, a.value_size, a.keys)
    print(f"{'sequential single-put Txns, Python gRPC (ceiling)':58} {ceiling:8.0f} rev/s")

    for window in (2, 4):
        n = min(a.revisions, 10_000)
        rate_w, lost = pipelined(base, n, a.value_size, window)
        print(f"{f'guarded Txns, {window} in flight ({n} revisions)':58} {rate_w:8.0f} rev/s  ({lost:.0%} reordered "
              "by etcd and sent again)")
    pitr = monitored(restore_cmd(repo, base / "pitr.etcd", "--to-revision", str(end)))
    m = re.search(r"replayed (\d+) revisions \((\d+) events\) in ([\d.]+)s \((\d+)/s\)", pitr.stderr)
    rate = float(m.group(4)) if m else float("nan")
    after = sequential_puts(base, n_ceiling, a.value_size, a.keys)  # again: the load of a shared machine moves
    print(f"{'etcdwarden replay (one Txn per source revision)':58} {rate:8.0f} rev/s  ratio {rate / ceiling:.2f} "
          f"(to the ceiling measured after it, {after:.0f} rev/s: {rate / after:.2f})")
    print(f"{'  peak RSS while replaying (anonymous + file)':58} {pitr.replay_rss:8.0f} MiB")
    print(f"{'  peak RSS, whole command (anonymous + file)':58} {pitr.peak_rss:8.0f} MiB  (anonymous only, "
          f"sampled: {pitr.peak_anon:.0f} MiB; the rest is the replayed snapshot's pages, mmap'd by the unchanged "
          "verification of the normal restore path)")
    wall = pitr.wall
    full = timed(restore_cmd(repo, base / "full.etcd", "--no-segments"))
    etcdutl = timed([str(find_binary("etcdutl")), "snapshot", "restore", str(next(repo.glob("snapshot_*"))),
                     "--data-dir", str(base / "etcdutl.etcd")])
    base_db = next(repo.glob("snapshot_*"))
    print(f"full backup: {base_db.stat().st_size / 1e6:.0f} MB snapshot")
    print(f"{'restore member --to-revision END (whole command)':58} {wall:8.1f} s")
    print(f"{'restore member --no-segments (the full backup alone)':58} {full.wall:8.1f} s  peak RSS "
          f"{full.max_rss_mib:.0f} MiB")
    print(f"{'etcdutl snapshot restore (base snapshot)':58} {etcdutl.wall:8.1f} s")
    snap = next((base / "pitr.etcd" / "member" / "snap").glob("db"), None)
    if snap is not None:
        print(f"restored data: {snap.stat().st_size / 1e6:.0f} MB")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not a.workdir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
