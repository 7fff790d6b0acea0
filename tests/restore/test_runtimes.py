"""systemd and static-pod runtimes against honest fakes of systemctl and crictl (tests/restore/fakes).

The fakes record every call and really run the members' etcd (systemctl from a unit's command line;
crictl reconciles like a kubelet: manifest present -> running, absent -> stopped).
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from etcdwarden.local.cluster import LocalCluster, stop_pid
from tests.backup.conftest import load
from tests.cli_helpers import cli
from tests.restore.conftest import backup_of
from tests.restore.helpers import member_dumps, put

FAKES = Path(__file__).parent / "fakes"


@pytest.fixture
def fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    state = tmp_path / "fake-state"
    (state / "units").mkdir(parents=True)
    (state / "containers").mkdir()
    monkeypatch.setenv("PATH", f"{FAKES}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_STATE", str(state))
    yield state
    for pid_file in [*state.glob("units/*/pid"), *state.glob("containers/*/pid")]:
        stop_pid(int(pid_file.read_text().strip()))


def _wait(c: LocalCluster, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(c.member_healthy(m) for m in c.members):
        assert time.monotonic() < deadline, "cluster not healthy"
        time.sleep(0.2)


def _mixed_cluster(tmp_path: Path, state: Path) -> tuple[LocalCluster, Path, Path]:
    """m1 a systemd unit, m2 a static pod, m3 a process; returns the cluster, spec and m2's manifest dir."""
    c = LocalCluster(tmp_path / "etcd", size=3)
    c.base_dir.mkdir(parents=True)
    m1, m2, m3 = c.members
    unit = state / "units" / "etcd-m1.service"
    unit.mkdir()
    (unit / "cmd").write_text(shlex.join(c.command(m1)))
    manifests = tmp_path / "kubelet" / "manifests"
    manifests.mkdir(parents=True)
    (manifests / "etcd-pod.yaml").write_text(shlex.join(c.command(m2)))
    (manifests / "kube-apiserver-pod.yaml").write_text("kube-apiserver")
    (state / "containers" / "etcd-m2").mkdir()
    (state / "containers" / "etcd-m2" / "manifest").write_text(str(manifests / "etcd-pod.yaml"))
    os.system("systemctl start etcd-m1.service; crictl ps --name etcd-m2 -q >/dev/null")
    c.start_member("m3")
    pid3 = m3.data_dir.with_name("m3.etcd.pid")
    pid3.write_text(f"{m3.pid}\n")
    _wait(c)
    members = [
        {"name": m1.name, "peer_urls": [m1.peer_url], "client_urls": [m1.client_url], "data_dir": str(m1.data_dir),
         "runtime": "systemd", "unit": "etcd-m1.service"},
        {"name": m2.name, "peer_urls": [m2.peer_url], "client_urls": [m2.client_url], "data_dir": str(m2.data_dir),
         "runtime": "static-pod", "manifest": str(manifests / "etcd-pod.yaml"), "container": "etcd-m2",
         "also_stop": ["kube-apiserver-pod.yaml"]},
        {"name": m3.name, "peer_urls": [m3.peer_url], "client_urls": [m3.client_url], "data_dir": str(m3.data_dir),
         "runtime": "process", "pid_file": str(pid3)},
    ]
    spec = tmp_path / "cluster.yaml"
    spec.write_text(yaml.safe_dump({"members": members}))
    return c, spec, manifests


@pytest.mark.etcd
def test_restore_cluster_with_systemd_static_pod_and_process(tmp_path: Path, fake_env: Path) -> None:
    c, spec, manifests = _mixed_cluster(tmp_path, fake_env)
    try:
        load(c, 100, value_size=64)
        b = backup_of(c, tmp_path / "backups")
        put(c, b"/later", b"x")
        dry = cli("restore", "cluster", str(b.directory), "--spec", str(spec), "--dry-run")
        assert dry.code == 0, dry.err
        assert f"mv {manifests}/kube-apiserver-pod.yaml" in dry.out and "systemctl stop etcd-m1.service" in dry.out
        calls_before = (fake_env / "calls").read_text()
        assert "systemctl stop" not in calls_before
        r = cli("restore", "cluster", str(b.directory), "--spec", str(spec))
        assert r.code == 0, r.err
        assert all(d == b.data for d in member_dumps(c))
        calls = (fake_env / "calls").read_text().splitlines()[len(calls_before.splitlines()):]
        assert "systemctl stop etcd-m1.service" in calls and "systemctl start etcd-m1.service" in calls
        assert calls.index("systemctl stop etcd-m1.service") < calls.index("systemctl start etcd-m1.service")
        assert "crictl ps --name etcd-m2 -q" in calls
        # both manifests are back, nothing left in the stopped directory
        assert sorted(p.name for p in manifests.iterdir()) == ["etcd-pod.yaml", "kube-apiserver-pod.yaml"]
        assert not list((manifests.parent / "manifests-stopped").iterdir())
        assert put(c, b"/after", b"y") == b.revision + 1
    finally:
        pid3 = c.members[2].data_dir.with_name("m3.etcd.pid")
        if pid3.exists():
            stop_pid(int(pid3.read_text().strip()))
        c.stop()


def test_runtime_preflight_problems(tmp_path: Path, fake_env: Path, saved: dict[str, object]) -> None:
    from tests.restore.conftest import SavedBackup

    b = saved["plain"]
    assert isinstance(b, SavedBackup)
    members = [
        {"name": "a", "peer_urls": ["http://127.0.0.1:1"], "client_urls": ["http://127.0.0.1:2"],
         "data_dir": str(tmp_path / "a"), "runtime": "systemd", "unit": "nope.service"},
        {"name": "b", "peer_urls": ["http://127.0.0.1:3"], "client_urls": ["http://127.0.0.1:4"],
         "data_dir": str(tmp_path / "b"), "runtime": "static-pod", "manifest": str(tmp_path / "none.yaml")},
    ]
    spec = tmp_path / "cluster.yaml"
    spec.write_text(yaml.safe_dump({"members": members}))
    r = cli("restore", "cluster", str(b.directory), "--spec", str(spec))
    assert r.code == 1 and "nope.service is not loaded" in r.err and "none.yaml not found" in r.err, r.err
    assert not (tmp_path / "a").exists()
    r = cli("restore", "cluster", str(b.directory), "--spec", str(spec), "--mode", "single-then-join")
    assert r.code == 2 and "process runtime" in r.err
