"""ScratchMember: a throwaway etcd on a copy of a data dir, on loopback, stopped by PID."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from etcdwarden.errors import EtcdwardenError
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.processes import pid_alive
from etcdwarden.restore import procs
from etcdwarden.restore.scratch_member import ScratchMember
from tests.backup.conftest import dump
from tests.conftest import etcdctl


def test_serves_a_copy_alone_then_stops_by_pid(etcd1: LocalCluster, tmp_path: Path) -> None:
    etcdctl(etcd1, "put", "/scratch/a", "1")
    etcdctl(etcd1, "put", "/scratch/b", "2")
    etcd1.stop()
    original = etcd1.members[0].data_dir
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    member = ScratchMember(copy, tmp_path / "scratch.log", name="probe")
    url = member.start(timeout=60)
    pid = member.pid
    try:
        assert url == member.client_url and url.startswith("http://127.0.0.1:")
        assert pid is not None and pid_alive(pid) and pid in procs.running_on(copy)
        assert member.serves()
        data = dump([url])
        assert data[b"/scratch/a"] == b"1" and data[b"/scratch/b"] == b"2"
        assert not procs.running_on(original)  # only the copy is started
    finally:
        member.stop()
    assert not pid_alive(pid) and not member.serves() and member.pid is None
    member.stop()  # a second stop is a no-op


@pytest.mark.etcd
def test_a_directory_that_does_not_start_is_an_error_with_the_log_and_no_leftover(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    (bad / "member" / "snap").mkdir(parents=True)
    (bad / "member" / "snap" / "db").write_bytes(b"not a bbolt file" * 512)
    (bad / "member" / "wal").mkdir()
    member = ScratchMember(bad, tmp_path / "bad.log")
    with pytest.raises(EtcdwardenError) as e:
        member.start(timeout=30)
    assert str(bad) in str(e.value) and str(tmp_path / "bad.log") in str(e.value)
    assert member.pid is None and not procs.running_on(bad)


@pytest.mark.unit
def test_no_directory_is_refused_before_anything_starts(tmp_path: Path) -> None:
    member = ScratchMember(tmp_path / "missing", tmp_path / "x.log")
    with pytest.raises(EtcdwardenError, match="not a directory"):
        member.start()
    assert member.pid is None and not (tmp_path / "x.log").exists()
