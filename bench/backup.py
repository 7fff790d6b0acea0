"""Backup speed and memory: etcdwarden backup vs etcdctl snapshot save, side by side in one run.

Usage: python -m bench.backup [--size-mb 1024] [--value-size 65536] [--rounds 5] [--workdir DIR] [--only TEXT,...]

Starts a 3-member loopback cluster, fills it to --size-mb (or uses the member ``--follower URL`` of a
cluster already running), then alternates etcdctl snapshot save and etcdwarden backup (the default
``--verify full``, ``--verify hash``, zstd with each) from the same follower, the order turning by one
variant per round, and prints wall times (medians), the ratios to etcdctl, etcdwarden's peak RSS and the
load average before and after. ``--only`` keeps the variants whose name contains one of the texts (etcdctl,
the reference, always runs).
Targets (issue 12): default ≤ 1.05× etcdctl, ``--verify hash`` ≤ 1.0×, zstd ≤ 1.15×; peak RSS ≤ 64 MiB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import Run, big_cluster, fill_bytes, timed
from etcdwarden.binaries import find_binary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--value-size", type=int, default=64 * 1024, help="bytes per value written by the fill (a "
                    "Kubernetes-like database: 2048; many small leaves make the structure check cost more)")
    ap.add_argument("--rounds", type=int, default=5, help="a multiple of the number of variants + 1 puts each "
                    "in every position equally often")
    ap.add_argument("--workdir")
    ap.add_argument("--only", default="")
    ap.add_argument("--ref-src", help="also run each etcdwarden variant with this src/ directory first on "
                    "PYTHONPATH (e.g. a checkout of main), alternated with the current code: before and after")
    ap.add_argument("--follower", help="a member of a running cluster to back up (no cluster is started)")
    a = ap.parse_args()
    base = Path(a.workdir or tempfile.mkdtemp(prefix="etcdwarden-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    cluster = big_cluster(base / "cluster") if a.follower is None else None
    try:
        if cluster is not None:
            fill_bytes(cluster, a.size_mb * 1024 * 1024, a.value_size)
            follower = cluster.members[1].client_url
        else:
            follower = a.follower
        etcdctl = str(find_binary("etcdctl"))
        me = [sys.executable, "-m", "etcdwarden"]
        variants: dict[str, list[str]] = {
            "etcdctl snapshot save": [],
            "etcdwarden backup (default: --verify full)": [],
            "etcdwarden backup --verify hash": ["--verify", "hash"],
            "etcdwarden backup --compress zstd": ["--compress", "zstd"],
            "etcdwarden backup --compress zstd --verify hash": ["--compress", "zstd", "--verify", "hash"],
        }
        only = [t for t in a.only.split(",") if t]
        variants = {k: v for k, v in variants.items()
                    if k.startswith("etcdctl") or not only or any(t in k for t in only)}
        envs: dict[str, dict[str, str] | None] = {k: None for k in variants}
        if a.ref_src:
            ref_env = {**os.environ, "PYTHONPATH": str(Path(a.ref_src).resolve())}
            both: dict[str, list[str]] = {}
            for k, v in variants.items():
                both[k] = v
                if not k.startswith("etcdctl"):  # right after its variant: both see the same machine state
                    both["[ref] " + k] = v
                    envs["[ref] " + k] = ref_env
            variants = both
        load_before = os.getloadavg()
        results: dict[str, list[Run]] = {k: [] for k in variants}
        out = base / "out"
        # Position matters on this kind of machine: the run right after another 1 GiB write (etcdctl's file
        # deleted, its pages reclaimed) used ~1 s more CPU than the same command one slot later, in every
        # round. So the order turns by one group per round (etcdctl, then each variant with its [ref] twin):
        # over a multiple of the group count every group runs in every slot once.
        groups = [[name] for name in variants if not name.startswith("[ref] ")]
        for g in groups:
            if "[ref] " + g[0] in variants:
                g.append("[ref] " + g[0])
        for rnd in range(a.rounds):
            turned = groups[rnd % len(groups):] + groups[:rnd % len(groups)]
            # odd rounds: each [ref] variant before its pair, so that order effects hit both alike
            names = [n for g in turned for n in (g[::-1] if rnd % 2 else g)]
            for name in names:
                extra = variants[name]
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                if name.startswith("etcdctl"):
                    cmd = [etcdctl, f"--endpoints={follower}", "snapshot", "save", str(out / "s.db")]
                else:
                    cmd = [*me, "backup", str(out), "--endpoints", follower, "--member", follower, *extra]
                r = timed(cmd, env=envs[name])
                if r.code != 0:
                    raise SystemExit(f"{name} failed")
                results[name].append(r)
        db = next(out.glob("snapshot_*"), None)
        ref = statistics.median(r.wall for r in results["etcdctl snapshot save"])
        print(f"database ~{a.size_mb} MB; snapshot file {db.stat().st_size / 1e6:.0f} MB" if db else "")
        print("load average before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} {:.2f}; rounds {}; medians".format(
            *load_before, *os.getloadavg(), a.rounds))
        print(f"{'variant':50} {'wall s':>8} {'ratio':>6} {'peak RSS MiB':>13} {'CPU s':>6}")
        for name, runs in results.items():
            w = statistics.median(r.wall for r in runs)
            rss = max(r.max_rss_mib for r in runs)
            cpu = statistics.median(r.cpu for r in runs)  # the command's own user + system time
            print(f"{name:50} {w:8.2f} {w / ref:6.2f} {rss:13.1f} {cpu:6.2f}")
    finally:
        if cluster is not None:
            cluster.stop()
        if not a.workdir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
