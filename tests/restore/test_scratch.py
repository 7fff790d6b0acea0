"""Decoded (plaintext) snapshot copies of a restore: private, next to the target, never left behind.

Issue 11 item 5: a SIGKILLed restore of an age backup left 1 MB of plaintext in the system temp dir.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pyrage
import pytest

from etcdwarden.local.cluster import LocalCluster, pid_alive
from tests.backup.conftest import dump, load
from tests.cli_helpers import cli
from tests.restore.conftest import SavedBackup, backup_of


def _age_backup(cluster: LocalCluster, tmp_path: Path) -> tuple[SavedBackup, Path]:
    load(cluster, 3000, value_size=1024)  # a few MB: decoding and restoring take a moment
    ident = pyrage.x25519.Identity.generate()
    idfile = tmp_path / "id.txt"
    idfile.write_text(f"{ident}\n")
    b = backup_of(cluster, tmp_path / "bk", compress="zstd", recipients=[str(ident.to_public())])
    assert b.snapshot.name.endswith(".db.zst.age")
    return b, idfile


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _files(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file()]


def _interrupt_mid_restore(argv: list[str], env: dict[str, str], target: Path, systmp: Path,
                           sig: signal.Signals) -> tuple[int, str]:
    """Start the restore, wait until a decoded copy exists (beside the target or in the system temp dir) and
    etcdutl has begun writing ``D.restoring-*``, send ``sig``; return the PID and its stderr. With SIGKILL its
    children (etcdutl) are killed too, by PID."""
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            decoded = [f for f in target.glob(".etcdwarden-tmp-*/snapshot.db") if f.stat().st_size > 0]
            if (decoded or _files(systmp)) and list(target.glob("etcd.restoring-*/member")):
                break
            assert p.poll() is None, f"the restore ended before it could be interrupted: {p.communicate()}"
            assert time.monotonic() < deadline, "no decoded copy appeared"
            time.sleep(0.002)
        if sig == signal.SIGKILL:
            os.kill(p.pid, signal.SIGSTOP)  # freeze it: no child may appear between listing and killing
            children = _children(p.pid)
            os.kill(p.pid, signal.SIGKILL)
            for c in children:
                if pid_alive(c):
                    os.kill(c, signal.SIGKILL)
        else:
            os.kill(p.pid, sig)
        _, err = p.communicate(timeout=120)
        return p.pid, err.decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_killed_age_restore_leaves_no_plaintext_and_next_run_cleans(etcd1: LocalCluster, tmp_path: Path) -> None:
    b, idfile = _age_backup(etcd1, tmp_path)
    systmp = tmp_path / "systmp"  # the system temp dir of the restore processes
    systmp.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    d = target / "etcd"
    c = LocalCluster(tmp_path / "run", size=1)
    args = ["restore", "member", str(b.directory), "--identity", str(idfile), "--data-dir", str(d),
            "--name", c.members[0].name, "--initial-cluster", c.initial_cluster]
    env = {**os.environ, "TMPDIR": str(systmp), "TMP": str(systmp), "TEMP": str(systmp)}
    pid, _ = _interrupt_mid_restore([sys.executable, "-m", "etcdwarden", *args], env, target, systmp,
                                    signal.SIGKILL)
    assert _files(systmp) == [], "plaintext in the system temp dir"
    left = list(target.glob(".etcdwarden-tmp-*"))  # the restore's copy, and the verification's
    assert left and all(f"-{pid}-" in x.name and stat.S_IMODE(x.stat().st_mode) == 0o700 for x in left), left
    assert not d.exists()
    half = [p for p in target.iterdir() if p.is_dir() and ".restoring-" in p.name]
    assert len(half) == 1  # etcdutl's half-written output, plaintext too
    r = cli(*args)
    assert r.code == 0, r.err
    assert all(f"removed {x}: a decoded snapshot copy left by an interrupted run (PID {pid}, gone)" in r.err
               for x in left), r.err
    assert f"removed {half[0]}: left by an interrupted restore (PID {pid}, gone)" in r.err, r.err
    assert not list(target.glob(".etcdwarden-tmp-*")) and _files(systmp) == []
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith("etcd.pre-restore-")) == ["etcd"]
    c.members[0].data_dir = d
    c.start()
    try:
        assert dump(c.endpoints) == b.data
    finally:
        c.stop()


def test_interrupted_age_restore_cleans_up(etcd1: LocalCluster, tmp_path: Path) -> None:
    """SIGINT (and, through cli/main.py, SIGTERM/SIGHUP: any exception) removes the decoded copy at once."""
    b, idfile = _age_backup(etcd1, tmp_path)
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    c = LocalCluster(tmp_path / "run", size=1)
    argv = [sys.executable, "-m", "etcdwarden", "restore", "member", str(b.directory), "--identity", str(idfile),
            "--data-dir", str(target / "etcd"), "--name", c.members[0].name, "--initial-cluster", c.initial_cluster]
    env = {**os.environ, "TMPDIR": str(systmp)}
    _, err = _interrupt_mid_restore(argv, env, target, systmp, signal.SIGINT)
    assert "Traceback" not in err, err
    assert sorted(p.name for p in target.iterdir()) == [], list(target.iterdir())
    assert _files(systmp) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_open_snapshot_copy_is_private_and_removed(tmp_path: Path, error: type[BaseException],
                                                   saved: dict[str, SavedBackup],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from etcdwarden.snapshot.source import open_snapshot

    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    ident = pyrage.x25519.Identity.generate()
    idfile = tmp_path / "id.txt"
    idfile.write_text(f"{ident}\n")
    age = tmp_path / "in" / "snap.db.age"
    age.parent.mkdir()
    age.write_bytes(pyrage.encrypt(saved["plain"].snapshot.read_bytes(), [ident.to_public()]))
    near = tmp_path / "near"
    near.mkdir()
    for work_dir, where in ((None, age.parent), (near, near)):
        with pytest.raises(error), open_snapshot(age, idfile, work_dir) as plain:
            assert plain.parent.parent == where and plain.parent.name.startswith(f".etcdwarden-tmp-{os.getpid()}-")
            assert stat.S_IMODE(plain.parent.stat().st_mode) == 0o700
            assert stat.S_IMODE(plain.stat().st_mode) == 0o600
            assert plain.read_bytes() == saved["plain"].snapshot.read_bytes()
            raise error("interrupted")
        assert sorted(p.name for p in where.iterdir()) == (["snap.db.age"] if where == age.parent else [])
    assert list(systmp.iterdir()) == []
