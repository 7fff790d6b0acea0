"""Issue 11 item 6: the temporary files of a killed run are removed by the next backup into the same
repository (which holds the lock; the dead run's PID is recorded in it), never a live run's; and item 7
(the lock part): a directory that cannot be written is one clear line and exit 1, never a traceback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.fsutil import Holder, dir_lock
from etcdwarden.local.cluster import LocalCluster
from tests.backup.conftest import load
from tests.cli_helpers import cli

TS = "2026-01-01_000000"

# A backup run as far as the repository sees it: the lock taken (and the holder recorded), a snapshot
# streaming into its .part file and a manifest being written under its .tmp-<pid> name. Then it waits.
WRITER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from etcdwarden.repository.local import LocalRepository
    d, ts, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    repo = LocalRepository(d)
    with repo.lock():
        sink = repo.open_write(f"snapshot_{ts}.db")
        sink.write(os.urandom(3 << 20))
        sink.flush()
        (d / f".backup_{ts}.json.tmp-{os.getpid()}").write_bytes(b"{")
        if mode == "hold":
            print("ready", flush=True)
            time.sleep(600)
    print("ready", flush=True)  # "release": alive, but no longer holding the lock
    time.sleep(600)
""")


@contextlib.contextmanager
def writer(directory: Path, mode: str = "hold") -> Iterator[subprocess.Popen[str]]:
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(directory), TS, mode], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def names(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_backup_removes_the_parts_of_a_killed_run(etcd1: LocalCluster, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    load(etcd1, 50)
    with writer(repo) as p:
        dead_pid = p.pid
        # while it lives and holds the lock, a backup waits for it / fails clearly and removes nothing
        r = cli("backup", str(repo), "--endpoints", etcd1.endpoints[0])
        assert r.code == 1 and f"pid {dead_pid}" in r.err and "--lock-wait" in r.err
        assert f"snapshot_{TS}.db.part" in names(repo)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    assert Holder.parse((repo / ".etcdwarden.lock").read_text()) is not None
    left = {f"snapshot_{TS}.db.part", f".backup_{TS}.json.tmp-{dead_pid}"}
    assert left <= names(repo)
    r = cli("backup", str(repo), "--endpoints", etcd1.endpoints[0])
    assert r.code == 0, r.err
    assert not left & names(repo), names(repo)
    assert "removed 2 temporary file(s)" in r.err and f"pid {dead_pid}" in r.err
    assert not [n for n in names(repo) if n.endswith(".part") or ".tmp-" in n]
    # the lock now records this (finished) process
    holder = Holder.parse((repo / ".etcdwarden.lock").read_text())
    assert holder is not None and holder.pid == os.getpid()


def test_the_files_of_a_live_writer_are_left_alone(etcd1: LocalCluster, tmp_path: Path) -> None:
    """A process still alive that wrote .part files and released the lock (not one of our runs, or one
    we cannot judge): nothing of it is removed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    load(etcd1, 20)
    with writer(repo, "release") as p:
        r = cli("backup", str(repo), "--endpoints", etcd1.endpoints[0])
        assert r.code == 0, r.err
        assert {f"snapshot_{TS}.db.part", f".backup_{TS}.json.tmp-{p.pid}"} <= names(repo)
        assert "removed" not in r.err
    # someone else's files of other names are never touched, whoever held the lock
    (repo / "notes.part").write_text("mine")
    (repo / "snapshot_x.db.part").write_text("mine")
    with dir_lock(repo):
        pass
    assert cli("backup", str(repo), "--endpoints", etcd1.endpoints[0]).code == 0
    assert {"notes.part", "snapshot_x.db.part"} <= names(repo)


@contextlib.contextmanager
def unwritable(d: Path) -> Iterator[None]:
    """Make ``d`` unwritable for us: immutable (chattr +i) as root, read-only mode otherwise."""
    if os.geteuid() == 0:
        r = subprocess.run(["chattr", "+i", str(d)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            pytest.fail(f"chattr +i is needed to make a directory unwritable for root: {r.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(d)], check=True)
    else:
        os.chmod(d, 0o555)
        try:
            yield
        finally:
            os.chmod(d, 0o700)


@pytest.mark.parametrize("used_before", [False, True])
def test_unwritable_repository_is_one_clear_line(etcd1: LocalCluster, tmp_path: Path, used_before: bool) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    if used_before:  # the lock file exists (and is writable itself): the first file we create fails instead
        for _ in range(2):
            assert cli("backup", str(repo), "--endpoints", etcd1.endpoints[0]).code == 0
    before = names(repo)
    with unwritable(repo):
        r = cli("backup", str(repo), "--endpoints", etcd1.endpoints[0])
        assert r.code == 1, r.err
        assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
        assert str(repo) in r.err and "not writable" in r.err and "chattr -i" in r.err
        for argv in (["backups", "prune", str(repo), "--max-number", "1"], ["backups", "delete", str(repo), TS]):
            r = cli(*argv)
            assert "Traceback" not in r.err, r.err
            if not used_before:  # the lock cannot be created
                assert r.code == 1 and ".etcdwarden.lock" in r.err and "not writable" in r.err, r.err
            elif argv[1] == "prune":  # the lock file exists; deleting the older backup is what fails
                assert r.code == 1 and "cannot delete" in r.err and "not writable" in r.err, r.err
                assert len(r.err.strip().splitlines()) == 1, r.err
            else:  # TS is no backup of this repository
                assert r.code == 2, r.err
        # below a directory that cannot be written, a new repository cannot be made: the same kind of line
        r = cli("backup", str(repo / "sub"), "--endpoints", etcd1.endpoints[0])
        assert r.code == 1 and "Traceback" not in r.err and str(repo / "sub") in r.err, r.err
    assert names(repo) == before


@pytest.mark.unit
def test_a_backup_leaves_the_unlocked_writers_of_its_own_process_alone(tmp_path: Path) -> None:
    """The daemon's receiver and drills write segments, their manifests, drill records and the receiver state
    without the repository lock: a backup of the same process (the previous lock holder is this very process)
    removes only backup parts; once the previous holder is gone, all of them go."""
    from etcdwarden.fsutil import LockInfo
    from etcdwarden.repository.local import remove_stale_temp

    rev = "0" * 18 + "7"
    unlocked = [f"segment_{TS}_{rev}.zst.part", f"segment_{TS}_{rev}.json.part", f"drill_{TS}.json.part",
                ".etcdwarden-receive.json.part"]
    backup_parts = [f"snapshot_{TS}.db.part", f"backup_{TS}.json.part"]
    for n in unlocked + backup_parts:
        (tmp_path / n).write_bytes(b"x")
    done = remove_stale_temp(tmp_path, LockInfo(tmp_path / ".etcdwarden.lock", Holder.me()))
    assert sorted(done.removed) == sorted(backup_parts) and names(tmp_path) == set(unlocked)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = Holder(dead.pid, None, Holder.me().host)
    done = remove_stale_temp(tmp_path, LockInfo(tmp_path / ".etcdwarden.lock", gone))
    assert sorted(done.removed) == sorted(unlocked) and names(tmp_path) == set()
