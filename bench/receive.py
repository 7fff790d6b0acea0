"""Continuous backup under load: ``etcdwarden receive`` beside ``etcdctl watch``, alternating, in one run.

Usage: python -m bench.receive [--seconds 60] [--phase 10] [--inflight 64] [--segment-seconds 5] [--workdir DIR]

Starts a 3-member loopback cluster and a load generator (1 KiB puts, ``--inflight`` in flight, one Python
process) for ``--seconds`` of load, cut into phases of ``--phase`` seconds that alternate:

* ``none``: nothing watches (the baseline);
* ``receive``: ``etcdwarden receive REPO`` runs (started before the phase; later phases resume its chain);
* ``etcdctl watch``: ``etcdctl watch --prefix ""`` runs, its output thrown away (the reference: the
  cheapest whole-keyspace watch there is).

Prints, per phase kind: puts/s, put latency p50/p99, and the ratio of p99 to the baseline's; for the
receiver: commit → durable lag (a put's acknowledgement to its segment's manifest appearing in REPO,
polled every 20 ms) p50/p99/max, its RSS at the start and end of each phase and its peak, and the load
average. Targets (issue 13): ≥ 2,000 puts/s, lag p99 ≤ segment seconds + 1 s, the receiver adds ≤ 5 %
to p99 put latency, RSS flat ≤ 96 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import big_cluster, cpu_seconds
from etcdwarden.binaries import find_binary
from etcdwarden.errors import EtcdError
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig

KINDS = ("none", "receive", "etcdctl watch")


@dataclass
class Load:
    """Puts in flight from one asyncio loop in a thread: (sent, latency, revision) per acknowledged put."""

    endpoints: list[str]
    inflight: int
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        value = os.urandom(1024)
        async with EtcdClient(ClientConfig.from_strings(self.endpoints, command_timeout=30)) as c:
            async def worker(i: int) -> None:
                n = 0
                while not self.stop.is_set():
                    t = time.monotonic()
                    try:
                        r = await c.put(f"/registry/bench/{i}/{n % 500}".encode(), value)
                    except EtcdError:
                        self.errors += 1
                        continue
                    self.samples.append((t, time.monotonic() - t, int(r.header.revision)))
                    n += 1

            await asyncio.gather(*(worker(i) for i in range(self.inflight)))


@dataclass
class Durable:
    """Polls REPO for segment manifests: revision range -> the time its manifest was first seen."""

    repo: Path
    seen: dict[str, float] = field(default_factory=dict)
    ranges: list[tuple[int, int, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                names = [n for n in os.listdir(self.repo) if n.startswith("segment_") and n.endswith(".json")]
            except FileNotFoundError:
                names = []
            for n in names:
                if n not in self.seen:
                    self.seen[n] = now
                    try:
                        doc = json.loads((self.repo / n).read_text())
                    except (OSError, ValueError):
                        del self.seen[n]  # written meanwhile: next round
                        continue
                    self.ranges.append((int(doc["first_revision"]), int(doc["last_revision"]), now))
            time.sleep(0.02)

    def when(self, revision: int) -> float | None:
        for first, last, t in self.ranges:
            if first <= revision <= last:
                return t
        return None


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def start_receiver(eps: list[str], repo: Path, segment_seconds: float) -> subprocess.Popen[bytes]:
    with open(repo.parent / "receive.log", "ab") as log:  # (a pipe nobody reads would fill up)
        p = subprocess.Popen([sys.executable, "-m", "etcdwarden", "--endpoints", ",".join(eps), "receive", str(repo),
                              "--segment-seconds", str(segment_seconds)], stdout=subprocess.DEVNULL, stderr=log)
    state = repo / ".etcdwarden-receive.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # running: its state names a base and is not stopped
        if p.poll() is not None:
            raise SystemExit(f"the receiver exited: {(repo.parent / 'receive.log').read_text()[-2000:]}")
        try:
            doc = json.loads(state.read_text())
            if doc.get("base") and not doc.get("stopped"):
                return p
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit("the receiver did not start")


def caught_up(repo: Path, revision: int, timeout: float = 300.0) -> None:
    """Until the receiver made ``revision`` durable (it resumes after the revisions of the phases without it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((repo / ".etcdwarden-receive.json").read_text()).get("revision", 0) >= revision:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"the receiver did not catch up with revision {revision}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--phase", type=float, default=10.0)
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--segment-seconds", type=float, default=5.0)
    ap.add_argument("--workdir")
    a = ap.parse_args()
    base = Path(a.workdir or tempfile.mkdtemp(prefix="etcdwarden-bench-receive-"))
    cluster = big_cluster(base / "cluster")
    repo = base / "repo"
    eps = cluster.endpoints
    load = Load(eps, a.inflight)
    durable = Durable(repo)
    threads = [threading.Thread(target=load.run, daemon=True), threading.Thread(target=durable.run, daemon=True)]
    phases: list[tuple[str, float, float]] = []
    rss: list[tuple[float, float]] = []
    peak = 0.0
    cpu: dict[str, list[float]] = {}
    receiver: subprocess.Popen[bytes] | None = None
    try:
        receiver = start_receiver(eps, repo, a.segment_seconds)  # takes the full backup before the load starts
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(60)
        receiver = None
        for t in threads:
            t.start()
        time.sleep(2.0)  # the load settles
        n = max(1, int(a.seconds / a.phase))
        for i in range(n):
            kind = KINDS[i % len(KINDS)]
            other: subprocess.Popen[bytes] | None = None
            if kind == "receive":
                receiver = start_receiver(eps, repo, a.segment_seconds)
                caught_up(repo, max((r for _, _, r in load.samples[-100:]), default=0))  # steady state only
            elif kind == "etcdctl watch":
                other = subprocess.Popen([str(find_binary("etcdctl")), f"--endpoints={','.join(eps)}", "watch",
                                          "--prefix", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            start = time.monotonic()
            start_rss = rss_mib(receiver.pid) if receiver else float("nan")
            watcher = receiver or other
            cpu0 = cpu_seconds(watcher.pid) if watcher else 0.0
            time.sleep(a.phase)
            end = time.monotonic()
            if watcher is not None:
                cpu.setdefault(kind, []).append((cpu_seconds(watcher.pid) - cpu0) / (end - start))
            phases.append((kind, start, end))
            if receiver is not None:
                rss.append((start_rss, rss_mib(receiver.pid)))
                peak = max(peak, rss_mib(receiver.pid, "VmHWM"))
                time.sleep(a.segment_seconds + 2.0)  # the phase's last segment becomes durable
                receiver.send_signal(signal.SIGTERM)
                receiver.wait(60)
                receiver = None
            if other is not None:
                other.terminate()
                other.wait(10)
        load.stop.set()
        for t in threads:
            t.join(30)
        durable.stop.set()
        report(load, durable, phases, rss, peak, a)
        print("CPU of the watching process (share of one core): " + ", ".join(
            f"{k} {sum(v) / len(v):.0%}" for k, v in cpu.items()))
    finally:
        for p in (receiver,):
            if p is not None and p.poll() is None:
                p.kill()
        cluster.stop()
        if not a.workdir:  # its own temporary directory (a 60 s run leaves ~2 GB): removed
            shutil.rmtree(base, ignore_errors=True)


def report(load: Load, durable: Durable, phases: list[tuple[str, float, float]], rss: list[tuple[float, float]],
           peak: float, a: argparse.Namespace) -> None:
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {a.inflight} puts in flight, 1 KiB values, "
          f"phases of {a.phase:g}s, segment seconds {a.segment_seconds:g}")
    base_p99 = None
    print(f"{'phase kind':16} {'seconds':>7} {'puts/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99 ratio':>9}")
    for kind in KINDS:
        spans = [(s, e) for k, s, e in phases if k == kind]
        lat = [lt for t, lt, _ in load.samples if any(s <= t <= e for s, e in spans)]
        secs = sum(e - s for s, e in spans)
        p99 = pct(lat, 0.99)
        if kind == "none":
            base_p99 = p99
        ratio = p99 / base_p99 if base_p99 else float("nan")
        print(f"{kind:16} {secs:7.1f} {len(lat) / secs if secs else 0:8.0f} {pct(lat, 0.5) * 1000:7.2f} "
              f"{p99 * 1000:7.2f} {ratio:9.3f}")
    spans = [(s, e) for k, s, e in phases if k == "receive"]
    lags = []
    missing = 0
    for t, lt, rev in load.samples:
        if any(s <= t <= e for s, e in spans):
            d = durable.when(rev)
            if d is None:
                missing += 1
            else:
                lags.append(d - (t + lt))
    print(f"receive: commit -> durable lag p50 {pct(lags, 0.5):.2f}s p99 {pct(lags, 0.99):.2f}s max "
          f"{max(lags, default=float('nan')):.2f}s over {len(lags)} puts ({missing} not found durable)")
    print("receive: RSS MiB per phase (start -> end): " + ", ".join(f"{s:.0f} -> {e:.0f}" for s, e in rss)
          + f"; peak {peak:.0f}")
    print(f"put errors: {load.errors}")


if __name__ == "__main__":
    main()
