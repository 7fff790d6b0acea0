"""Minority failure (``member replace``) and quorum loss (``restore cluster``) on a real 3-member cluster."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.local.cluster import LocalCluster
from tests.backup.conftest import dump, load
from tests.cli_helpers import cli
from tests.restore.conftest import backup_of
from tests.restore.helpers import member_dumps, put, statuses, stop_all, write_spec


@pytest.fixture
def c3(etcd3: LocalCluster) -> Iterator[LocalCluster]:
    yield etcd3
    stop_all(etcd3)


def test_member_replace_minority_failure(c3: LocalCluster, tmp_path: Path) -> None:
    load(c3, 150, value_size=128)
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    m3 = c3.member("m3")
    c3.stop_member("m3", kill=True)
    shutil.move(m3.data_dir, tmp_path / "wiped-m3")  # the disk is gone
    put(c3, b"/written/while/m3/down", b"yes")
    eps = ["--endpoints", c3.members[0].client_url]
    h = cli("endpoint", "health", "--cluster", *eps)
    assert h.code == 1 and "member replace m3" in h.out + h.err, h.out + h.err
    d = cli("doctor", "--spec", str(spec), *eps)
    assert d.code == 1 and "minority" in d.out and f"etcdwarden member replace m3 --spec {spec}" in d.out, d.out
    # a healthy member is not replaced without --force=healthy
    r = cli("member", "replace", "m1", "--spec", str(spec), *eps)
    assert r.code == 3 and "--force=healthy" in r.err
    dry = cli("member", "replace", "m3", "--spec", str(spec), "--dry-run", *eps)
    assert dry.code == 0 and "member add --learner" in dry.out, dry.err
    r = cli("member", "replace", "m3", "--spec", str(spec), "-w", "json", *eps)
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["removed_id"] and rep["new_id"] != rep["removed_id"] and rep["moved_aside"] is None
    data = dump(c3.endpoints)
    assert data[b"/written/while/m3/down"] == b"yes" and len(data) == 151
    assert all(x == data for x in member_dumps(c3))
    sts = statuses(c3)
    assert not any(s.isLearner for s in sts) and len({s.leader for s in sts}) == 1
    d = cli("doctor", "--spec", str(spec), *eps)
    assert d.code == 0 and "healthy" in d.out


def test_quorum_lost_then_restore_cluster(c3: LocalCluster, tmp_path: Path) -> None:
    load(c3, 120, value_size=64)
    b = backup_of(c3, tmp_path / "backups")
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    c3.stop_member("m2", kill=True)
    c3.stop_member("m3", kill=True)
    eps = ["--endpoints", c3.members[0].client_url, "--command-timeout", "2s"]
    h = cli("endpoint", "health", "--cluster", *eps)
    assert h.code == 1 and "restore cluster" in h.out + h.err, h.out + h.err
    d = cli("doctor", "--spec", str(spec), *eps)
    assert d.code == 1 and "quorum lost" in d.out and "etcdwarden restore cluster" in d.out, d.out
    r = cli("member", "replace", "m3", "--spec", str(spec), *eps)
    assert r.code == 3 and "restore cluster" in r.err, r.err
    r = cli("restore", "cluster", str(b.directory), "--spec", str(spec))
    assert r.code == 0, r.err
    assert all(x == b.data for x in member_dumps(c3))
    assert put(c3, b"/after", b"1") == b.revision + 1
