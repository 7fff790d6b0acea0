"""A cluster with authentication enabled and no (or too few) credentials: one error, before any snapshot.

Issue 11 item 10: without credentials the backup used to stream from each member in turn and print
four errors (one warning per member, then the summary).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.local.cluster import LocalCluster
from tests.backup.conftest import load
from tests.cli_helpers import cli
from tests.conftest import ALICE_PASSWORD, ROOT_PASSWORD, _start, enable_auth
from tests.tiers import starts


@pytest.fixture
@starts("etcd")
def etcd3_auth(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalCluster]:
    c = _start(request, tmp_path / "etcd3auth", 3)
    load(c, 50)
    enable_auth(c)
    yield c
    c.stop()


def _left(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".etcdwarden.lock")) if d.exists() else []


def test_no_credentials_is_one_error(etcd3_auth: LocalCluster, tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "b"
    r = cli("backup", str(out), "--endpoints", ",".join(etcd3_auth.endpoints))
    assert r.code == 1, r.err
    assert r.err.count("\n") == 1 and r.err.startswith("Error: authentication required"), r.err
    assert "--user" in r.err and "root role" in r.err
    assert not [rec for rec in caplog.records if "snapshot from" in rec.getMessage()]  # no member was tried
    assert _left(out) == []


def test_user_without_root_is_one_error(etcd3_auth: LocalCluster, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "b"
    r = cli("backup", str(out), "--endpoints", ",".join(etcd3_auth.endpoints), "--user", f"alice:{ALICE_PASSWORD}")
    assert r.code == 1, r.err
    assert r.err.count("\n") == 1 and "'alice'" in r.err and "root role" in r.err, r.err
    assert not [rec for rec in caplog.records if "snapshot from" in rec.getMessage()]
    assert _left(out) == []
    r = cli("backup", str(out), "--endpoints", ",".join(etcd3_auth.endpoints), "--user", "root:wrong")
    assert r.code == 1 and r.err.count("\n") == 1 and "authentication failed" in r.err, r.err
    r = cli("backup", str(out), "--endpoints", ",".join(etcd3_auth.endpoints), "--user", f"root:{ROOT_PASSWORD}")
    assert r.code == 0, r.err
