"""SSHHost and ``restore cluster`` through a REAL OpenSSH sshd (Debian's 9.2, see tests/restore/sshd.py).

The remote member is a systemd member whose ``systemctl`` is the fake in tests/restore/fakes (it runs
the member's real etcd from the unit's command line): sshd's ``SetEnv`` puts it first on the PATH of
every SSH session, as the remote machine's own PATH would hold the real one. Nothing the remote side
does is run by the test process itself: the fake is not on the test's PATH.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from etcdwarden.binaries import find_binary
from etcdwarden.errors import EtcdwardenError
from etcdwarden.local.cluster import LocalCluster, pid_alive, stop_pid
from etcdwarden.local.ports import free_port
from etcdwarden.restore.runtimes.ssh import SSHHost
from etcdwarden.restore.spec import SSHSpec
from tests.backup.conftest import load
from tests.cli_helpers import cli
from tests.restore.conftest import SavedBackup, backup_of
from tests.restore.helpers import member_dumps, put
from tests.restore.sshd import RealSSHD
from tests.tiers import starts

FAKES = Path(__file__).parent / "fakes"
UNIT = "etcd-m1.service"
NOBODY = 65534


@pytest.fixture
def fake_state(tmp_path: Path) -> Iterator[Path]:
    """State of the fake systemctl; every unit it started is stopped by its PID at teardown."""
    state = tmp_path / "fake-state"
    (state / "units").mkdir(parents=True)
    yield state
    for pid_file in state.glob("units/*/pid"):
        stop_pid(int(pid_file.read_text().strip()))


@pytest.fixture
@starts("backend")
def sshd(tmp_path: Path, fake_state: Path) -> Iterator[RealSSHD]:
    d = RealSSHD(tmp_path / "sshd", session_env={"PATH": f"{FAKES}:/usr/local/bin:/usr/bin:/bin",
                                                 "FAKE_STATE": str(fake_state)})
    d.start()
    yield d
    d.stop()


def _spec(d: RealSSHD) -> SSHSpec:
    return SSHSpec(key=str(d.client_key), known_hosts=str(d.known_hosts))


def _accepted(d: RealSSHD) -> int:
    return d.logs().count(f"Accepted publickey for {d.user} from 127.0.0.1")


def test_ssh_host_operations_through_real_sshd(tmp_path: Path, sshd: RealSSHD) -> None:
    async def go() -> None:
        host = SSHHost(sshd.target, _spec(sshd))
        try:
            res = await host.run(["sh", "-c", 'echo "$SSH_CONNECTION"; echo err >&2; exit 3'])
            assert res.code == 3 and res.stderr.strip() == "err", res
            assert res.stdout.startswith("127.0.0.1 ") and res.stdout.split()[2:] == ["127.0.0.1", str(sshd.port)]
            quoted = await host.run(["printf", "%s|", "a b", "$HOME", "it's"])
            assert quoted.stdout == "a b|$HOME|it's|"  # one shell-quoted line: no word splitting, no expansion
            d = tmp_path / "etcd"
            d.mkdir()
            (d / "f").write_text("x")
            assert await host.exists(str(d)) and not await host.exists(str(tmp_path / "none"))
            (tmp_path / "dangling").symlink_to(tmp_path / "none")
            assert await host.exists(str(tmp_path / "dangling"))
            assert await host.owner(str(d)) == f"{os.getuid()}:{os.getgid()}"
            assert await host.owner(str(tmp_path / "none")) is None
            await host.rename(str(d), str(tmp_path / "etcd.pre-restore-t"))
            assert not d.exists() and (tmp_path / "etcd.pre-restore-t" / "f").read_text() == "x"
            (tmp_path / "taken").mkdir()
            with pytest.raises(EtcdwardenError, match="taken exists"):
                await host.rename(str(tmp_path / "etcd.pre-restore-t"), str(tmp_path / "taken"))
            src = tmp_path / "snap.db"
            src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several SFTP writes
            await host.upload(src, str(tmp_path / "uploaded.db"))
            up = tmp_path / "uploaded.db"
            assert up.read_bytes() == src.read_bytes() and (up.stat().st_mode & 0o777) == 0o600
            r = tmp_path / "etcd.restoring-t"
            (r / "member").mkdir(parents=True)
            if os.geteuid() == 0:
                await host.give(str(r), f"{NOBODY}:{NOBODY}", 0o700)
                assert (r / "member").stat().st_uid == NOBODY  # chown -R
            else:
                await host.give(str(r), None, 0o700)
            assert (r.stat().st_mode & 0o777) == 0o700
            with pytest.raises(EtcdwardenError, match=r"not a \.restoring- directory"):
                await host.remove_restoring(str(tmp_path / "etcd.pre-restore-t"))
            await host.remove_restoring(str(r))
            assert not r.exists() and (tmp_path / "etcd.pre-restore-t").exists()
        finally:
            await host.close()

    asyncio.run(go())
    assert _accepted(sshd) == 1  # one connection for every operation


def _remote(d: RealSSHD, argv: list[str]) -> None:
    async def go() -> None:
        host = SSHHost(d.target, _spec(d))
        try:
            (await host.run(argv)).check()
        finally:
            await host.close()

    asyncio.run(go())


def _wait_healthy(c: LocalCluster, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(c.member_healthy(m) for m in c.members):
        assert time.monotonic() < deadline, f"cluster not healthy:\n{c.logs()}"
        time.sleep(0.2)


@pytest.mark.etcd  # and its sshd
def test_restore_cluster_with_a_member_behind_real_sshd(tmp_path: Path, sshd: RealSSHD, fake_state: Path) -> None:
    c = LocalCluster(tmp_path / "etcd", size=3)
    c.base_dir.mkdir(parents=True)
    m1, m2, m3 = c.members
    unit = fake_state / "units" / UNIT
    unit.mkdir()
    (unit / "cmd").write_text(shlex.join(c.command(m1)))
    pid_files = {m.name: c.base_dir / f"{m.name}.etcd.pid" for m in (m2, m3)}
    try:
        _remote(sshd, ["systemctl", "start", UNIT])  # m1 runs on "the other host", started there
        for m in (m2, m3):
            c.start_member(m.name)
            pid_files[m.name].write_text(f"{m.pid}\n")
        _wait_healthy(c)
        load(c, 100, value_size=64)
        b = backup_of(c, tmp_path / "backups")
        put(c, b"/later", b"x")
        as_root = os.geteuid() == 0
        if as_root:  # the remote data dir belongs to the etcd user; the restored one must too
            os.chown(m1.data_dir, NOBODY, NOBODY)
        old_pid = int((unit / "pid").read_text())
        members = [
            {"name": m1.name, "peer_urls": [m1.peer_url], "client_urls": [m1.client_url], "data_dir": str(m1.data_dir),
             "runtime": "systemd", "unit": UNIT, "host": sshd.target, "etcdutl": str(find_binary("etcdutl"))},
            *({"name": m.name, "peer_urls": [m.peer_url], "client_urls": [m.client_url], "data_dir": str(m.data_dir),
               "runtime": "process", "pid_file": str(pid_files[m.name])} for m in (m2, m3)),
        ]
        spec = tmp_path / "cluster.yaml"
        spec.write_text(yaml.safe_dump({"members": members, "ssh": {"key": str(sshd.client_key),
                                                                    "known_hosts": str(sshd.known_hosts)}}))
        calls_before = len((fake_state / "calls").read_text().splitlines())
        accepted_before = _accepted(sshd)

        r = cli("restore", "cluster", str(b.directory), "--spec", str(spec), "-w", "json")
        assert r.code == 0, f"{r.err}\n--- sshd log ---\n{sshd.logs()}"

        report = json.loads(r.out)
        assert report["verify"]["ok"] and report["verify"]["expected_revision"] == b.revision
        assert all(d == b.data for d in member_dumps(c))
        assert put(c, b"/after/restore", b"ok") == b.revision + 1
        # m1 was stopped, waited for and started by systemctl run in sessions of the real sshd
        assert _accepted(sshd) > accepted_before
        calls = (fake_state / "calls").read_text().splitlines()[calls_before:]
        assert calls[0] == f"systemctl show --property=LoadState --value {UNIT}", calls
        assert calls.index(f"systemctl stop {UNIT}") < calls.index(f"systemctl start {UNIT}"), calls
        assert f"systemctl is-active --quiet {UNIT}" in calls[calls.index(f"systemctl start {UNIT}"):]
        new_pid = int((unit / "pid").read_text())
        assert new_pid != old_pid and not pid_alive(old_pid) and pid_alive(new_pid)
        environ = Path(f"/proc/{new_pid}/environ").read_bytes().split(b"\0")
        assert any(e.startswith(b"SSH_CONNECTION=127.0.0.1 ") for e in environ)  # started in an SSH session
        # its old data dir was moved aside remotely, the snapshot uploaded by SFTP is gone again
        aside = Path(next(x["moved_aside"] for x in report["members"] if x["name"] == m1.name))
        assert aside.name.startswith("m1.etcd.pre-restore-") and (aside / "member" / "snap" / "db").exists()
        assert not list(c.base_dir.glob("m1.etcd.snapshot-*")) and not list(c.base_dir.glob("*.restoring-*"))
        assert (m1.data_dir.stat().st_mode & 0o777) == 0o700
        if as_root:  # what etcdutl wrote was chowned -R over SSH (files etcd has created since are root's)
            restored = [m1.data_dir, m1.data_dir / "member", m1.data_dir / "member" / "snap" / "db",
                        *(m1.data_dir / "member" / "wal").glob("0000000000000000-*.wal")]
            assert len(restored) == 4 and {(p.stat().st_uid, p.stat().st_gid) for p in restored} == {(NOBODY, NOBODY)}
    finally:
        for pid_file in pid_files.values():
            if pid_file.exists():
                stop_pid(int(pid_file.read_text().strip()))
        c.stop()


def _etcdwarden(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, in its own process (to see exactly what it prints)."""
    return subprocess.run([sys.executable, "-m", "etcdwarden", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_wrong_key_untrusted_host_and_unreachable_port_fail_clearly(
        tmp_path: Path, sshd: RealSSHD, saved: dict[str, SavedBackup]) -> None:
    import asyncssh

    b = saved["plain"]
    data = tmp_path / "remote" / "etcd"
    data.mkdir(parents=True)
    (data / "keep").write_text("untouched")
    other_key = tmp_path / "other_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(other_key))
    os.chmod(other_key, 0o600)
    wrong_hosts = tmp_path / "known_hosts.wrong"
    wrong_hosts.write_text(f"[127.0.0.1]:{sshd.port} "
                           f"{asyncssh.generate_private_key('ssh-ed25519').export_public_key().decode()}")
    closed = free_port()
    cases = {
        "wrong key": (sshd.target, {"key": str(other_key), "known_hosts": str(sshd.known_hosts)},
                      "Permission denied"),
        "untrusted host key": (sshd.target, {"key": str(sshd.client_key), "known_hosts": str(wrong_hosts)},
                               "not trusted"),
        "unreachable": (f"{sshd.user}@127.0.0.1:{closed}", {"key": str(sshd.client_key),
                                                            "known_hosts": str(sshd.known_hosts)},
                        "Connect call failed"),
    }
    for case, (target, ssh, reason) in cases.items():
        spec = tmp_path / f"{case.replace(' ', '-')}.yaml"
        spec.write_text(yaml.safe_dump({"ssh": ssh, "members": [
            {"name": "m1", "peer_urls": ["http://127.0.0.1:1"], "client_urls": ["http://127.0.0.1:2"],
             "data_dir": str(data), "runtime": "systemd", "unit": UNIT, "host": target}]}))
        r = _etcdwarden("restore", "cluster", str(b.directory), "--spec", str(spec))
        assert r.returncode == 1, (case, r.returncode, r.stderr)
        assert f"SSH connection to {target} failed" in r.stderr and reason in r.stderr, (case, r.stderr)
        assert "Traceback" not in r.stderr, (case, r.stderr)
        assert r.stderr.strip().splitlines()[-1].startswith(f"Error: SSH connection to {target} failed: "), r.stderr
        assert not spec.with_name(f"{spec.stem}.restore-state.json").exists(), case  # nothing was started
    assert (data / "keep").read_text() == "untouched" and sorted(p.name for p in data.parent.iterdir()) == ["etcd"]
    log = sshd.logs()
    assert "Accepted publickey" not in log, log
    assert f"Connection closed by authenticating user {sshd.user} 127.0.0.1" in log, log
