"""Helpers of the receive tests: the receiver as a real process, a workload, and the cluster's own history."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.format.receiver import STATE_NAME
from etcdwarden.format.segment import Event, LeaseRecord, RevisionRecord
from etcdwarden.repository.base import Repository
from etcdwarden.repository.window import read_segment, read_window, resolve


def start_receiver(endpoints: list[str], repo: str, *extra: str, env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "etcdwarden", "--endpoints", ",".join(endpoints), "receive", repo,
                             "--segment-seconds", "0.5", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, cwd=cwd)


def wait_receiving(repo: Repository, proc: subprocess.Popen[str], revision: int = 0, timeout: float = 60.0) -> None:
    """Until the receiver's state says it runs a chain (and has made ``revision`` durable)."""
    from etcdwarden.repository.window import read_state

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the receiver exited ({proc.returncode}): {err}")
        if repo.stat(STATE_NAME) is not None:
            st = read_state(repo)
            if st is not None and st.base is not None and st.revision >= revision and not st.stopped:
                return
        time.sleep(0.1)
    raise AssertionError(f"the receiver did not reach revision {revision} within {timeout}s")


@contextlib.contextmanager
def running(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A receiver (or a wrapper of it) started with ``argv``; killed and reaped if it still runs at the end."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the receiver did not stop on signal {sig}: {err}") from None
    return proc.returncode, err


def workload(endpoints: list[str], ops: int, prefix: str, seed: int = 1) -> int:
    """Puts, deletes, multi-op Txns, lease grant/attach/revoke under ``/registry/<prefix>``; the last revision."""
    rnd = random.Random(seed)

    async def go() -> int:
        async with EtcdClient(ClientConfig.from_strings(endpoints)) as c:
            lease = await c.lease_grant(300)
            rev = 0
            for i in range(ops):
                key = f"/registry/{prefix}/{rnd.randrange(40)}".encode()
                roll = rnd.random()
                if roll < 0.55:
                    rev = (await c.put(key, os.urandom(rnd.randrange(1, 300)), lease=lease if i % 7 == 0 else 0)
                           ).header.revision
                elif roll < 0.7:
                    rev = (await c.delete(key)).header.revision
                elif roll < 0.9:
                    ops_ = [pb.RequestOp(request_put=pb.PutRequest(key=key + b"/%d" % j, value=b"t%d" % i))
                            for j in range(3)]
                    ops_.append(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key)))
                    rev = (await c.txn(pb.TxnRequest(success=ops_))).header.revision
                else:
                    await c.lease_revoke(lease)
                    lease = await c.lease_grant(rnd.choice([60, 120, 300]))
            assert rev  # (a revoke changes the revision too: ask for the last one)
            return int((await c.get(b"/")).header.revision)

    return asyncio.run(go())


def history(endpoints: list[str], first: int, last: int) -> list[tuple[int, tuple[Event, ...]]]:
    """Every revision ``first..last`` as the cluster's own watch reports it (the reference to compare with)."""

    async def go() -> list[tuple[int, tuple[Event, ...]]]:
        async with EtcdClient(ClientConfig.from_strings(endpoints)) as c:
            w = await c.watch(pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00", start_revision=first))
            by_rev: dict[int, list[Event]] = {}
            try:
                while not by_rev or max(by_rev) < last:
                    resp = await w.next(10)
                    assert resp is not None, "the reference watch stalled"
                    for e in resp.events:
                        kv = e.kv
                        by_rev.setdefault(kv.mod_revision, []).append(Event(
                            "delete" if e.type == 1 else "put", kv.key, kv.value, kv.create_revision,
                            kv.mod_revision, kv.version, kv.lease))
            finally:
                w.close()
            return [(r, tuple(evs)) for r, evs in sorted(by_rev.items()) if r <= last]

    return asyncio.run(go())


def captured(repo: Repository) -> tuple[list[tuple[int, tuple[Event, ...]]], list[LeaseRecord], int]:
    """Every revision the latest chain holds, its lease records, and its base revision (data re-hashed)."""
    plan = resolve(repo, read_window(repo, rehash=True))
    revs: list[tuple[int, tuple[Event, ...]]] = []
    leases: list[LeaseRecord] = []
    for m in plan.segments:
        for rec in read_segment(repo, m):
            if isinstance(rec, RevisionRecord):
                revs.append((rec.revision, rec.events))
            else:
                leases.append(rec)
    return revs, leases, plan.base_revision


def current_revision(endpoints: list[str]) -> int:
    async def go() -> int:
        async with EtcdClient(ClientConfig.from_strings(endpoints)) as c:
            return int((await c.get(b"/")).header.revision)

    return asyncio.run(go())
