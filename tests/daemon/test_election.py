"""Several agents against a real 3-member etcd: exactly one backs up; a dead leader is replaced in the TTL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.daemon.loader import load_config
from etcdwarden.daemon.service import Daemon
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.local.ports import free_ports
from tests.daemon.helpers import SEED_RECURRING, FakeClock, arun, daemon_doc, http_get, manifests

UTC = dt.UTC


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GRPC_VERBOSITY": "NONE"}
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "etcdwarden", *args], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        stop(p)


def test_three_once_agents_started_together_make_exactly_one_backup(
        etcd3: LocalCluster, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    repo = tmp_path / "repo"
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(daemon_doc(repo, etcd3.endpoints) + "---\n" + SEED_RECURRING)
    logs = [tmp_path / f"a{i}.log" for i in range(3)]
    procs += [spawn(["daemon", "--once", "--config", str(cfg), "--agent-name", f"a{i}"], logs[i]) for i in range(3)]
    codes = [p.wait(90) for p in procs]
    out = [log.read_text() for log in logs]
    assert codes == [0, 0, 0], out
    assert len(manifests(repo)) == 1, out
    assert sum("backup etcd-recurring-backup: success" in o for o in out) == 1, out
    assert sum("no job was due" in o for o in out) == 2, out


def _leaders(ports: list[int]) -> list[int]:
    out = []
    for port in ports:
        try:
            code, body = http_get(port, "/healthz", timeout=1)
        except OSError:
            continue
        if code == 200 and json.loads(body)["leader"]:
            out.append(port)
    return out


def _wait_leader(ports: list[int], timeout: float) -> tuple[int, float]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        found = _leaders(ports)
        if found:
            assert len(found) == 1, found
            return found[0], time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"no leader among {ports} within {timeout}s")


def test_killed_leader_is_replaced_within_the_ttl_and_sigterm_hands_over_at_once(
        etcd3: LocalCluster, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    ttl = 5.0
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(daemon_doc(tmp_path / "repo", etcd3.endpoints, ttl=f"{ttl:g}s"))
    ports = free_ports(3)
    for i, port in enumerate(ports):
        procs.append(spawn(["daemon", "--config", str(cfg), "--agent-name", f"a{i}", "--listen",
                            f"127.0.0.1:{port}"], tmp_path / f"a{i}.log"))
    by_port = dict(zip(ports, procs, strict=True))
    first, _ = _wait_leader(ports, 30)
    time.sleep(0.3)
    assert _leaders(ports) == [first]  # only one leads
    os.kill(by_port[first].pid, signal.SIGKILL)  # a crash: no resignation, the lease has to expire
    by_port[first].wait(10)
    rest = [p for p in ports if p != first]
    second, took = _wait_leader(rest, ttl + 5)
    assert took <= ttl + 2.0, f"takeover took {took:.1f}s with a {ttl:g}s lease"
    # SIGTERM resigns: the last agent leads at once, without waiting for the lease
    os.kill(by_port[second].pid, signal.SIGTERM)
    assert by_port[second].wait(15) == 0
    _third, took = _wait_leader([p for p in rest if p != second], ttl + 5)
    assert took < ttl / 2, f"handover after SIGTERM took {took:.1f}s"


@arun
async def test_three_daemons_one_schedule_tick_exactly_one_backup(etcd3: LocalCluster, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    path = tmp_path / "daemon.yaml"
    path.write_text(daemon_doc(repo, etcd3.endpoints, tick="0.1s") + "---\n" + SEED_RECURRING)
    cfg = load_config([path])
    clock = FakeClock(dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    clients = [EtcdClient(ClientConfig.from_strings(etcd3.endpoints)) for _ in range(3)]
    daemons = [Daemon(cfg, c, agent=f"a{i}", clock=clock, listen="127.0.0.1:0") for i, c in enumerate(clients)]
    tasks = [asyncio.create_task(d.run()) for d in daemons]

    async def until(cond: object, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while not cond():  # type: ignore[operator]
            assert time.monotonic() < end, "timed out"
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
            await asyncio.sleep(0.05)

    try:
        await until(lambda: len(manifests(repo)) == 1)  # the first run of a new schedule
        assert sum(d.leading for d in daemons) == 1
        await asyncio.sleep(0.5)  # every agent has looked at the schedule several times by now
        assert len(manifests(repo)) == 1
        clock.now = dt.datetime(2024, 5, 2, 4, 20, 1, tzinfo=UTC)  # the tick
        await until(lambda: len(manifests(repo)) == 2)
        await asyncio.sleep(0.5)
        assert len(manifests(repo)) == 2
        leader = next(d for d in daemons if d.leading)
        st = (await leader.store.load())["backup/etcd-recurring-backup"]
        assert st.successes == 2 and st.last_slot == dt.datetime(2024, 5, 2, 4, 20, tzinfo=UTC)
    finally:
        for d in daemons:
            d.request_stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.close()


def test_scheduled_rolling_defrag_through_the_default_runner(etcd3: LocalCluster, tmp_path: Path) -> None:
    from tests.cli_helpers import cli
    from tests.conftest import etcdctl

    path = tmp_path / "daemon.yaml"
    path.write_text(daemon_doc(tmp_path / "repo", etcd3.endpoints) + (
        "defrag:\n"
        "  - name: nightly-defrag\n    schedule: '30 3 * * *'\n    timeZone: America/New_York\n"
        "    rule: 'dbSize >= 0'\n    wait: 0s\n    moveLeader: true\n    catchUp: true\n"
        "  - name: picky-defrag\n    schedule: '30 3 * * *'\n    rule: 'dbSizeFree > 100GiB'\n    wait: 0s\n"
        "    catchUp: true\n"))
    # both jobs were first seen two days ago and missed their last slot (catchUp: true runs it once now)
    seen = (dt.datetime.now(UTC) - dt.timedelta(days=2)).isoformat()
    for name in ("nightly-defrag", "picky-defrag"):
        etcdctl(etcd3, "put", f"/etcdwarden/daemon/state/defrag/{name}", json.dumps({"first_seen": seen}))
    res = cli("-w", "json", "daemon", "--once", "--config", str(path))
    assert res.code == 0, res.err
    runs = {r["job"]: r for r in json.loads(res.out)["runs"]}
    assert runs["nightly-defrag"]["result"] == "success" and runs["nightly-defrag"]["defragmented"] == 3
    assert runs["picky-defrag"]["result"] == "success" and runs["picky-defrag"]["skipped"] == 3
