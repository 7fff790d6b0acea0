"""A resumed ``restore cluster`` adopts what a killed run started, and verify proves who serves each member.

Issue 11 item 3: after a kill inside the start step the orphaned etcd held the ports; the rerun started a
second one that died on "address already in use", recorded the dead PID and still said "verified".
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from etcdwarden.errors import EtcdError
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster, LocalMember, pid_alive, stop_pid
from etcdwarden.restore.procs import cmdline, port_owners, running_on
from tests.backup.conftest import load
from tests.cli_helpers import cli
from tests.restore.conftest import backup_of
from tests.restore.helpers import member_dumps, stop_all, write_spec


@pytest.fixture
def c3(etcd3: LocalCluster) -> Iterator[LocalCluster]:
    yield etcd3
    stop_all(etcd3)
    for m in etcd3.members:  # whatever a killed run or a test started on the data dirs, by PID
        for pid in running_on(m.data_dir):
            stop_pid(pid)


def _answers(url: str) -> bool:
    async def go() -> bool:
        async with EtcdClient(ClientConfig.from_strings([url], dial_timeout=1.0)) as c:
            try:
                await c.status(c.endpoint(url), timeout=2.0)
            except EtcdError:
                return False
            return True

    return asyncio.run(go())


def _pid_file(m: LocalMember) -> Path:
    return m.data_dir.with_name(f"{m.data_dir.name}.pid")


def _client_port(m: LocalMember) -> int:
    port = urlsplit(m.client_url).port
    assert port is not None
    return port


def test_kill_inside_start_then_rerun_adopts_the_orphan(c3: LocalCluster, tmp_path: Path) -> None:
    load(c3, 100, value_size=64)
    b = backup_of(c3, tmp_path / "backups")
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    state = tmp_path / "cluster.restore-state.json"
    argv = [sys.executable, "-m", "etcdwarden", "restore", "cluster", str(b.directory), "--spec", str(spec)]
    env = {**os.environ, "ETCDWARDEN_RESTORE_KILL_IN": "start"}
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr
    first = c3.members[0]
    orphans = running_on(first.data_dir)
    assert len(orphans) == 1 and not _pid_file(first).exists()  # started, never recorded
    doc = json.loads(state.read_text())
    assert doc["steps"]["restore"]["done"] and "start" not in doc["steps"]
    assert all(not running_on(m.data_dir) for m in c3.members[1:])

    r = cli("restore", "cluster", str(b.directory), "--spec", str(spec), "-w", "json")
    assert r.code == 0, r.err
    assert f"{first.name}: adopted PID {orphans[0]}" in r.err, r.err
    report = json.loads(r.out)
    doc = json.loads(state.read_text())
    for m in c3.members:
        serving = running_on(m.data_dir)
        assert len(serving) == 1, (m.name, serving)  # one etcd per member: no second one started
        pid = serving[0]
        assert int(_pid_file(m).read_text()) == pid
        assert doc["members"][m.name]["pid"] == pid
        assert next(x for x in report["members"] if x["name"] == m.name)["pid"] == pid
        assert port_owners(_client_port(m), "127.0.0.1") == (True, {pid})
    assert running_on(first.data_dir) == orphans
    assert report["verify"]["ok"] and all(d == b.data for d in member_dumps(c3))


def test_verify_fails_when_a_recorded_member_process_is_dead(c3: LocalCluster, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    load(c3, 50, value_size=64)
    b = backup_of(c3, tmp_path / "backups")
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    state = tmp_path / "cluster.restore-state.json"
    monkeypatch.setenv("ETCDWARDEN_RESTORE_CRASH_AFTER", "wait-healthy")
    r = cli("restore", "cluster", str(b.directory), "--spec", str(spec))
    assert r.code == 1 and "injected crash after step wait-healthy" in r.err, r.err
    monkeypatch.delenv("ETCDWARDEN_RESTORE_CRASH_AFTER")
    victim = c3.members[1]
    recorded = json.loads(state.read_text())["members"][victim.name]["pid"]
    assert recorded == int(_pid_file(victim).read_text())
    argv = cmdline(recorded)
    assert argv is not None
    os.kill(recorded, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid_alive(recorded) or port_owners(_client_port(victim), "127.0.0.1")[0]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # another etcd on the same data dir and URLs, which the restore did not start: the member answers,
    # but not from the process the restore recorded
    with open(tmp_path / "impostor.log", "ab") as log:
        impostor = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _answers(victim.client_url):
            assert impostor.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        r = cli("restore", "cluster", str(b.directory), "--spec", str(spec))
        assert r.code == 1, (r.out, r.err)
        assert f"member {victim.name}: its etcd process (PID {recorded}) is not running" in r.err, r.err
        assert "verified" not in r.out
        assert not json.loads(state.read_text())["finished"]
        stop_pid(impostor.pid)  # and with nothing serving it at all, verify fails too
        r = cli("restore", "cluster", str(b.directory), "--spec", str(spec))
        assert r.code == 1 and f"PID {recorded}) is not running" in r.err, r.err
        assert f"member {victim.name} does not answer on {victim.client_url}" in r.err, r.err
    finally:
        stop_pid(impostor.pid)


def test_start_never_runs_a_second_etcd_over_a_held_port(c3: LocalCluster, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A port held by something the restore did not start: named, nothing started, no PID recorded."""
    import socket

    b = backup_of(c3, tmp_path / "backups")
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    state = tmp_path / "cluster.restore-state.json"
    monkeypatch.setenv("ETCDWARDEN_RESTORE_CRASH_AFTER", "restore")
    assert cli("restore", "cluster", str(b.directory), "--spec", str(spec)).code == 1
    monkeypatch.delenv("ETCDWARDEN_RESTORE_CRASH_AFTER")
    first = c3.members[0]
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", _client_port(first)))
        holder.listen()
        r = cli("restore", "cluster", str(b.directory), "--spec", str(spec))
        assert r.code == 1 and f"{first.client_url} is already in use by PID {os.getpid()}" in r.err, r.err
        assert all(not running_on(m.data_dir) for m in c3.members)
        doc = json.loads(state.read_text())
        assert "start" not in doc["steps"] and "pid" not in doc["members"][first.name]
        assert not _pid_file(first).exists()
    r = cli("restore", "cluster", str(b.directory), "--spec", str(spec))
    assert r.code == 0, r.err
    assert all(d == b.data for d in member_dumps(c3))
