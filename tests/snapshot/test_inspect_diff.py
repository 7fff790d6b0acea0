"""``snapshot inspect`` and ``snapshot diff`` against what the live cluster (real etcdctl) returned."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from etcdwarden.snapshot.diff import diff_snapshots
from etcdwarden.snapshot.inspect import read_keys
from tests.cli_helpers import cli
from tests.conftest import etcdctl
from tests.snapshot import fill_mixed, save, start_cluster
from tests.tiers import starts


@dataclass
class Scenario:
    a: Path
    b: Path
    get_a: dict[str, object]  # etcdctl get --prefix "" -w json at A's revision
    get_old: dict[str, object]  # etcdctl get at an older revision after compaction
    old_rev: int
    compact_rev: int


def _get(cluster: object, *args: str) -> dict[str, object]:
    out: dict[str, object] = json.loads(etcdctl(cluster, "get", "--prefix", "", "-w", "json", *args))  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="module")
@starts("etcd")
def sc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    base = tmp_path_factory.mktemp("inspect")
    cluster = start_cluster(base / "cluster")
    try:
        fill_mixed(cluster)  # compacts at 30
        old_rev = 45
        get_old = _get(cluster, f"--rev={old_rev}")
        a = save(cluster, base / "a.db")
        get_a = _get(cluster)
        etcdctl(cluster, "put", "/new/key", "n")
        etcdctl(cluster, "put", "/k/01", "changed")
        etcdctl(cluster, "put", "/k/02", "value-2")  # same value again: not a change
        etcdctl(cluster, "del", "/k/04")
        etcdctl(cluster, "put", "/k/05", "back")  # deleted in A, re-created in B
        b = save(cluster, base / "b.db")
        yield Scenario(a, b, get_a, get_old, old_rev, 30)
    finally:
        cluster.stop()


def _kvs(doc: dict[str, object]) -> list[tuple[bytes, bytes, int, int, int, int]]:
    kvs = doc.get("kvs", [])
    assert isinstance(kvs, list)
    return [(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", "")), kv["create_revision"],
             kv["mod_revision"], kv["version"], kv.get("lease", 0)) for kv in kvs]


def test_inspect_latest_equals_live_get(sc: Scenario) -> None:
    ks = read_keys(sc.a)
    got = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) for kv in ks.kvs]
    assert got == _kvs(sc.get_a)
    assert ks.revision == sc.get_a["header"]["revision"]  # type: ignore[index]
    assert ks.compact_revision == sc.compact_rev
    assert any(kv.lease for kv in ks.kvs) and any(len(kv.value) == 200_000 for kv in ks.kvs)


def test_inspect_at_older_revision(sc: Scenario) -> None:
    ks = read_keys(sc.a, rev=sc.old_rev)
    got = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) for kv in ks.kvs]
    assert got == _kvs(sc.get_old)
    r = cli("snapshot", "inspect", "--rev", "10", str(sc.a))
    assert r.code == 2 and "compacted" in r.err
    r = cli("snapshot", "inspect", "--rev", "100000", str(sc.a))
    assert r.code == 2 and "newer" in r.err


def test_inspect_cli(sc: Scenario, tmp_path: Path) -> None:
    r = cli("snapshot", "inspect", "-w", "json", "--prefix", "/k/0", str(sc.a))
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    want = [kv for kv in _kvs(sc.get_a) if kv[0].startswith(b"/k/0")]
    assert _kvs(doc) == want and doc["count"] == len(want) > 0
    r = cli("snapshot", "inspect", "--keys-only", "-w", "json", "--prefix", "/k/0", str(sc.a))
    keys_only = json.loads(r.out)["kvs"]
    assert [base64.b64decode(kv["key"]) for kv in keys_only] == [w[0] for w in want]
    assert all("value" not in kv for kv in keys_only)
    r = cli("snapshot", "inspect", "--prefix", "/leased", str(sc.a))
    assert r.code == 0 and "/leased/a" in r.out and "with-lease" in r.out
    zst = tmp_path / "a.db.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(sc.a.read_bytes()))
    r2 = cli("snapshot", "inspect", "--prefix", "/leased", str(zst))
    assert r2.code == 0 and r2.out == r.out


def test_diff(sc: Scenario) -> None:
    d = diff_snapshots(sc.a, sc.b)
    assert d.added == [b"/k/05", b"/new/key"]
    assert d.changed == [b"/k/01"]
    assert d.deleted == [b"/k/04"]
    assert diff_snapshots(sc.a, sc.a).identical
    r = cli("snapshot", "diff", "-w", "json", str(sc.a), str(sc.b))
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert (doc["added"], doc["changed"], doc["deleted"]) == (["/k/05", "/new/key"], ["/k/01"], ["/k/04"])
    assert doc["revisionB"] == doc["revisionA"] + 5
    r = cli("snapshot", "diff", "--prefix", "/new", str(sc.a), str(sc.b))
    assert r.code == 0 and "/new/key" in r.out and "/k/01" not in r.out
