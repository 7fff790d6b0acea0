"""Snapshots taken from a real etcd 3.4 server (Debian's packages): our status equals etcdutl 3.5.1's.

The 3.4 binaries come from scripts/fetch-etcd34.sh (apt-get download + dpkg -x into .cache/etcd34).
If they cannot be fetched the test fails: a skipped cross-version check would prove nothing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.local.cluster import LocalCluster
from etcdwarden.snapshot.status import db_status
from etcdwarden.snapshot.verify import verify_path
from tests.snapshot import etcdutl_status
from tests.tiers import starts

REPO = Path(__file__).resolve().parents[2]


def _fetch() -> Path:
    res = subprocess.run(["bash", str(REPO / "scripts" / "fetch-etcd34.sh")], capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, f"fetch-etcd34.sh failed:\n{res.stderr}"
    bindir = Path(res.stdout.strip().splitlines()[-1])
    assert (bindir / "etcd").is_file() and (bindir / "etcdctl").is_file()
    return bindir


@pytest.fixture(scope="module")
@starts("etcd")
def snap34(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    bindir = _fetch()
    assert _fetch() == bindir  # idempotent
    base = tmp_path_factory.mktemp("etcd34")
    cluster = LocalCluster(base / "cluster", size=1, etcd_binary=bindir / "etcd")
    try:
        cluster.start()
        env = {**os.environ, "ETCDCTL_API": "3"}
        ctl = [str(bindir / "etcdctl"), f"--endpoints={cluster.endpoints[0]}"]

        def run(*args: str, stdin: str | None = None) -> str:
            r = subprocess.run(ctl + list(args), input=stdin, capture_output=True, text=True, env=env,
                               timeout=60, check=False)
            assert r.returncode == 0, r.stderr
            return r.stdout

        assert "3.4." in run("version")
        assert '"version":"3.4.' in run("endpoint", "status", "-w", "json")  # the server is 3.4
        for i in range(60):
            run("put", f"/v34/{i:03d}", f"value-{i}" * (1 + i % 7))
        run("del", "--prefix", "/v34/01")
        run("put", "/v34/big", stdin="z" * 20_000)
        lease = run("lease", "grant", "300").split()[1]
        run("put", "--lease", lease, "/v34/leased", "x")
        run("compact", "20")
        out = base / "snap34.db"
        run("snapshot", "save", str(out))
        yield out, bindir
    finally:
        cluster.stop()


def test_status_of_etcd34_snapshot_matches_etcdutl(snap34: tuple[Path, Path]) -> None:
    path, _ = snap34
    ours = db_status(path).as_json()
    assert ours == etcdutl_status(path)
    assert ours["revision"] > 60


def test_verify_etcd34_snapshot(snap34: tuple[Path, Path]) -> None:
    report = verify_path(snap34[0])
    assert report.as_json()["ok"] is True and report.as_json()["sha256"] == "ok"
