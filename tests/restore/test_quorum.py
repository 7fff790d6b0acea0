"""Quorum lost with a survivor ahead of the last backup: ``doctor --spec`` and ``restore quorum`` on real etcd.

Issue 14: every tool here (ours included) pointed at a backup when quorum was lost, throwing away what a
surviving member held beyond it. ``doctor`` now reads the data dirs offline and recommends ``restore
quorum``, which recovers from the most advanced survivor without losing a revision.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.local.cluster import LocalCluster, stop_pid
from etcdwarden.restore.procs import running_on
from tests.backup.conftest import dump, load
from tests.cli_helpers import cli
from tests.restore.conftest import backup_of, tree
from tests.restore.helpers import hashkvs, load_prefix, member_dumps, put, statuses, stop_all, write_spec


@pytest.fixture
def c3(etcd3: LocalCluster) -> Iterator[LocalCluster]:
    yield etcd3
    stop_all(etcd3)
    for m in etcd3.members:  # whatever a killed run started on the data dirs, by PID
        for pid in running_on(m.data_dir):
            stop_pid(pid)


def _fill(c: LocalCluster, names: list[str], count: int, prefix: str) -> None:
    """Write ``count`` keys through the members ``names`` only (the others are down)."""
    from etcdwarden.errors import Unreachable
    from etcdwarden.etcd.client import EtcdClient
    from etcdwarden.etcd.config import ClientConfig
    from etcdwarden.local.sample import fill

    async def go() -> None:
        # (a member was just killed: if it led, the others elect a new leader first, slowly on a loaded machine;
        # a proposal made meanwhile ends in etcd's own "request timed out": the same puts are made again)
        urls = [c.member(n).client_url for n in names]
        async with EtcdClient(ClientConfig.from_strings(urls, command_timeout=60.0)) as cl:
            for attempt in range(3):
                try:
                    await fill(cl, count, value_size=64, prefix=prefix, seed=3)
                    return
                except Unreachable as e:
                    if "request timed out" not in str(e) or attempt == 2:
                        raise

    asyncio.run(go())


def _lose_quorum(c: LocalCluster, tmp_path: Path) -> tuple[int, dict[bytes, bytes]]:
    """Kill m2 and m3; m2's disk is gone, m3's database is destroyed. The last revision and the data."""
    last = put(c, b"/written/last", b"after the backup")
    data = dump(c.endpoints)
    c.stop_member("m2", kill=True)
    c.stop_member("m3", kill=True)
    shutil.move(c.member("m2").data_dir, tmp_path / "m2-disk-gone")
    db = c.member("m3").data_dir / "member" / "snap" / "db"
    with open(db, "r+b") as f:
        f.truncate(8192)
    return last, data


def _recovered(c: LocalCluster, data: dict[bytes, bytes], last: int) -> None:
    assert all(d == data for d in member_dumps(c))
    sts = statuses(c)
    assert not any(s.isLearner for s in sts) and len({s.leader for s in sts}) == 1
    revs = {int(s.header.revision) for s in sts}
    assert len(revs) == 1 and revs.pop() >= last
    assert len(set(hashkvs(c, last))) == 1
    assert put(c, b"/after/recovery", b"ok") > last
    assert all(d.get(b"/after/recovery") == b"ok" for d in member_dumps(c))


def test_survivor_ahead_of_backup_doctor_then_restore_quorum(c3: LocalCluster, tmp_path: Path) -> None:
    load(c3, 120, value_size=64)
    repo = tmp_path / "backups"
    b = backup_of(c3, repo)
    load_prefix(c3, 40, "/after-backup")
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    last, data = _lose_quorum(c3, tmp_path)
    assert last > b.revision
    eps = ["--endpoints", c3.members[0].client_url, "--command-timeout", "2s"]

    d = cli("doctor", "--spec", str(spec), "--repository", str(repo), "-w", "json", *eps)
    assert d.code == 1, d.err
    doc = json.loads(d.out)
    assert doc["situation"] == "quorum-lost"
    assert doc["commands"] == [f"etcdwarden restore quorum --spec {spec} --survivor m1"]
    advice = doc["advice"]
    assert advice["survivor"] == "m1" and advice["backup"]["revision"] == b.revision
    assert advice["revisions_lost_by_backup_restore"] == last - b.revision
    states = {x["name"]: x["state"] for x in doc["data_dirs"]}
    assert states == {"m1": "ok", "m2": "absent", "m3": "damaged"}
    # each data dir's last applied revision and index, read offline
    m1_dir = next(x for x in doc["data_dirs"] if x["name"] == "m1")
    assert m1_dir["revision"] == last and m1_dir["applied_index"] >= last  # one raft entry per write, and more
    assert m1_dir["committed_index"] >= m1_dir["applied_index"] and m1_dir["committed_term"] >= 1
    text = cli("doctor", "--spec", str(spec), "--repository", str(repo), *eps)
    assert f"a backup restore would lose {last - b.revision} revisions" in text.out, text.out
    assert "APPLIED INDEX" in text.out and str(m1_dir["applied_index"]) in text.out, text.out
    assert "restore quorum" in text.out

    m1 = c3.member("m1")
    dry = cli("restore", "quorum", "--spec", str(spec), "--dry-run")
    assert dry.code == 0, dry.err
    assert "--force-new-cluster" in dry.out and "from m1" in dry.out
    assert m1.is_running() and not list(tmp_path.rglob("*.pre-quorum-*"))

    r = cli("restore", "quorum", "--spec", str(spec), "-w", "json")
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["survivor"] == "m1" and rep["verify"]["ok"] and rep["revision"] >= last
    moved = {x["name"]: x["moved_aside"] for x in rep["members"]}
    assert moved["m2"] is None  # its disk was gone
    for name in ("m1", "m3"):  # the survivor's original and the damaged one: kept, never deleted
        aside = Path(moved[name])
        assert aside.name.startswith(f"{c3.member(name).data_dir.name}.pre-quorum-")
        assert (aside / "member" / "snap" / "db").exists()
    assert (Path(moved["m3"]) / "member" / "snap" / "db").stat().st_size == 8192
    _recovered(c3, data, last)
    assert cli("doctor", "--spec", str(spec), *eps[:2]).code == 0


def test_refuses_a_survivor_that_is_not_the_most_advanced(c3: LocalCluster, tmp_path: Path) -> None:
    load(c3, 60, value_size=64)
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    c3.stop_member("m3", kill=True)  # m3 stops here
    _fill(c3, ["m1", "m2"], 30, "/without-m3")
    last = put(c3, b"/written/last", b"m1 and m2 have it")
    data = dump(c3.endpoints)
    c3.stop_member("m2", kill=True)  # quorum lost; m1 and m2 hold more than m3
    before = tree(c3.member("m3").data_dir)

    r = cli("restore", "quorum", "--spec", str(spec), "--survivor", "m3")
    assert r.code == 3 and "--force=not-most-advanced" in r.err and "m1" in r.err, r.err
    assert c3.member("m1").is_running() and tree(c3.member("m3").data_dir) == before
    assert not (tmp_path / "cluster.quorum-state.json").exists()
    assert not list(tmp_path.rglob("*.pre-quorum-*"))

    dry = cli("restore", "quorum", "--spec", str(spec), "--dry-run", "-w", "json")
    assert dry.code == 0, dry.err
    chosen = json.loads(dry.out)["survivor"]
    assert chosen in ("m1", "m2")  # the most advanced (which of the two learnt the last commit first)

    r = cli("restore", "quorum", "--spec", str(spec))
    assert r.code == 0, r.err
    assert f"recovered from {chosen}" in r.out
    _recovered(c3, data, last)


def test_refuses_a_survivor_whose_data_fails_the_structure_check(c3: LocalCluster, tmp_path: Path) -> None:
    load(c3, 40, value_size=64)
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    for name in ("m1", "m2", "m3"):
        c3.stop_member(name, kill=True)
    wal = next((c3.member("m2").data_dir / "member" / "wal").glob("*.wal"))
    with open(wal, "r+b") as f:  # a flipped byte in the middle of the log
        f.seek(300)
        byte = f.read(1)
        f.seek(300)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = cli("restore", "quorum", "--spec", str(spec), "--survivor", "m2", "--timeout", "20s")
    assert r.code == 3 and "--force=structure" in r.err and "CRC" in r.err, r.err
    assert not list(tmp_path.rglob("*.pre-quorum-*"))


def test_quorum_still_held_is_refused(c3: LocalCluster, tmp_path: Path) -> None:
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    r = cli("restore", "quorum", "--spec", str(spec))
    assert r.code == 3 and "--force=quorum" in r.err and "member replace" in r.err, r.err
    assert all(m.is_running() for m in c3.members)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["copy", "force-new-cluster", "join"])
def test_crash_in_the_middle_then_rerun(c3: LocalCluster, tmp_path: Path, step: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    load(c3, 80, value_size=64)
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    load_prefix(c3, 20, "/more")
    last, data = _lose_quorum(c3, tmp_path)
    monkeypatch.setenv("ETCDWARDEN_RESTORE_CRASH_AFTER", step)
    r = cli("restore", "quorum", "--spec", str(spec))
    assert r.code == 1 and f"injected crash after step {step}" in r.err, r.err
    state = json.loads((tmp_path / "cluster.quorum-state.json").read_text())
    assert state["steps"][step]["done"] and not state["finished"]
    monkeypatch.delenv("ETCDWARDEN_RESTORE_CRASH_AFTER")
    dry = cli("restore", "quorum", "--spec", str(spec), "--dry-run")
    assert dry.code == 0 and "a real run continues there" in dry.out, dry.out + dry.err
    r = cli("restore", "quorum", "--spec", str(spec), "--survivor", "m3")
    assert r.code == 3 and "in progress" in r.err, r.err
    r = cli("restore", "quorum", "--spec", str(spec), "-w", "json")
    assert r.code == 0, r.err
    assert "continuing the quorum restore" in r.err
    _recovered(c3, data, last)
    m1 = c3.member("m1")
    # one copy, one original kept: the rerun did not copy or move anything twice
    assert len(list(m1.data_dir.parent.glob(f"{m1.data_dir.name}.pre-quorum-*"))) == 1
    assert not list(m1.data_dir.parent.glob(f"{m1.data_dir.name}.restoring-*"))
    assert os.path.exists(m1.data_dir / "member" / "wal")


@pytest.mark.unit
def test_advice_prefers_a_backup_that_holds_everything() -> None:
    from etcdwarden.restore.survey import BackupPoint, DataDirSurvey, advise
    from etcdwarden.snapshot.wal import WalState

    def dd(name: str, revision: int, index: int, state: str = "ok") -> DataDirSurvey:
        wal = WalState("w", commit=index, commit_term=4)
        return DataDirSurvey(name, "localhost", f"/d/{name}", state, revision, 0, index, 4, wal)

    surveys = [dd("a", 90, 100), dd("b", 95, 105), dd("c", 99, 110, state="damaged")]
    ahead = advise(surveys, BackupPoint("2026-01-01_000000", 80, None, "/b"), "c.yaml", "/b")
    assert ahead.quorum_restore and ahead.survivor is not None and ahead.survivor.name == "b"
    assert ahead.lost_by_backup_restore == 15 and "--survivor b" in ahead.command
    behind = advise(surveys, BackupPoint("2026-01-01_000000", 95, None, "/b"), "c.yaml", "/b")
    assert not behind.quorum_restore and behind.command == "etcdwarden restore cluster /b --spec c.yaml"
    none = advise([dd("a", 1, 1, "absent")], None, "c.yaml", None)
    assert none.survivor is None and "restore cluster BACKUP_DIR" in none.command
