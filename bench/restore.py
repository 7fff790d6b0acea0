"""Restore speed: ``etcdwarden restore member`` vs ``etcdutl snapshot restore`` alone, and ``restore cluster``.

Usage: python -m bench.restore [--size-mb 1024] [--rounds 2] [--workdir DIR]

Starts a 3-member loopback cluster, fills it to --size-mb, takes a plain backup, then alternates
``etcdutl snapshot restore`` and ``etcdwarden restore member`` (which also verifies the whole backup, in
parallel with etcdutl) into fresh directories and prints wall times and the ratio (target ≤ 1.1×).
Finally ``etcdwarden restore cluster`` restores all three members of the running cluster (process
runtime) and reports the time from the first stop to every member healthy, and the whole command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from bench.common import Run, big_cluster, fill_bytes, timed
from etcdwarden.binaries import find_binary
from etcdwarden.local.cluster import LocalCluster, stop_pid


def _spec(cluster: LocalCluster, path: Path) -> Path:
    members = []
    for m in cluster.members:
        pid = m.data_dir.with_name(f"{m.data_dir.name}.pid")
        if m.pid is not None:
            pid.write_text(f"{m.pid}\n")
        members.append({"name": m.name, "peer_urls": [m.peer_url], "client_urls": [m.client_url],
                        "data_dir": str(m.data_dir), "pid_file": str(pid),
                        "extra_args": ["--quota-backend-bytes", str(8 * 1024**3)]})
    path.write_text(yaml.safe_dump({"members": members}))
    return path


def _stop_all(cluster: LocalCluster) -> None:
    for m in cluster.members:
        pid = m.data_dir.with_name(f"{m.data_dir.name}.pid")
        if pid.exists() and pid.read_text().strip().isdigit():
            stop_pid(int(pid.read_text().strip()))
    cluster.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--workdir")
    a = ap.parse_args()
    base = Path(a.workdir or tempfile.mkdtemp(prefix="etcdwarden-bench-restore-"))
    cluster = big_cluster(base / "cluster")
    me = [sys.executable, "-m", "etcdwarden"]
    try:
        fill_bytes(cluster, a.size_mb * 1024 * 1024)
        backups = base / "backups"
        subprocess.run([*me, "backup", str(backups), "--endpoints", cluster.members[1].client_url, "--verify",
                        "hash"], check=True, capture_output=True)
        snap = next(backups.glob("snapshot_*.db"))
        m = cluster.members[0]
        flags = ["--name", m.name, "--initial-cluster", cluster.initial_cluster]
        etcdutl = str(find_binary("etcdutl"))
        variants: dict[str, Callable[[Path], list[str]]] = {
            "etcdutl snapshot restore": lambda d: [etcdutl, "snapshot", "restore", str(snap), "--data-dir", str(d),
                                                   *flags, "--initial-advertise-peer-urls", m.peer_url],
            "etcdwarden restore member": lambda d: [*me, "restore", "member", str(backups), "--data-dir", str(d),
                                                    *flags],
        }
        results: dict[str, list[Run]] = {k: [] for k in variants}
        out = base / "restored"
        for i in range(a.rounds):
            order = list(variants.items())
            for name, cmd in order if i % 2 == 0 else reversed(order):  # alternate: no order advantage
                shutil.rmtree(out, ignore_errors=True)
                subprocess.run(["sync"], check=False)
                time.sleep(2)  # let writeback of the previous round settle
                r = timed(cmd(out / "m1.etcd"))
                if r.code != 0:
                    raise SystemExit(f"{name} failed")
                results[name].append(r)
        shutil.rmtree(out, ignore_errors=True)
        ref = statistics.median(r.wall for r in results["etcdutl snapshot restore"])
        print(f"database ~{a.size_mb} MB; snapshot file {snap.stat().st_size / 1e6:.0f} MB; rounds {a.rounds}")
        print(f"{'variant':32} {'wall s':>8} {'ratio':>6} {'peak RSS MiB':>13}")
        for name, runs in results.items():
            wall = statistics.median(r.wall for r in runs)
            rss = max(r.max_rss_mib for r in runs)
            print(f"{name:32} {wall:8.2f} {wall / ref:6.2f} {rss:13.0f}")
        spec = _spec(cluster, base / "cluster.yaml")
        begin = time.monotonic()
        res = subprocess.run([*me, "restore", "cluster", str(backups), "--spec", str(spec), "-w", "json"],
                             capture_output=True, text=True, check=False)
        total = time.monotonic() - begin
        if res.returncode != 0:
            raise SystemExit(f"restore cluster failed: {res.stderr[-2000:]}")
        report = json.loads(res.stdout)
        print(f"restore cluster (3 members, process runtime): stop -> healthy "
              f"{report['seconds_stop_to_healthy']:.2f}s; whole command (verify, restore, start, HashKV check) "
              f"{total:.2f}s")
    finally:
        _stop_all(cluster)


if __name__ == "__main__":
    main()
