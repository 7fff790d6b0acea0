"""``backups drill`` on an object store: a compressed backup in real SeaweedFS S3, drilled from its URL; the record
is written into the bucket beside it, and a drill of a backup whose content differs from its manifest fails there
too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etcdwarden.format.names import BackupNames
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.repository.base import open_repository
from tests.backup.conftest import load
from tests.cli_helpers import cli
from tests.repository.seaweed import SeaweedS3


def test_drill_a_backup_in_s3(etcd1: LocalCluster, seaweed: SeaweedS3, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    load(etcd1, 200, value_size=256)
    url = seaweed.url("drill")
    ep = ["--s3-endpoint", seaweed.endpoint]
    r = cli("backup", url, "--endpoints", etcd1.endpoints[0], "--compress", "zstd", *ep)
    assert r.code == 0, r.err
    work = tmp_path / "work"
    work.mkdir()
    # a compressed backup is decoded: never into the system temp dir, here into --temp-dir
    r = cli("backups", "drill", url, *ep, "--temp-dir", str(work), "-w", "json")
    assert r.code == 0, r.err
    [d] = json.loads(r.out)["drills"]
    assert d["result"] == "passed" and d["figures"]["hash_kv"]["ok"] is True and d["figures"]["keys"]["ok"] is True
    assert d["record"].startswith(url) and list(work.iterdir()) == []
    [b] = json.loads(cli("backups", "list", url, *ep, "-w", "json").out)["backups"]
    assert b["proven"] is True and b["drill"]["result"] == "passed"
    assert f"drill_{b['id']}.json" in b["objects"]

    # the manifest now claims another HashKV (its files still match their sha256): unproven, kept
    with open_repository(url, seaweed.options()) as repo:
        name = BackupNames(b["id"]).manifest
        m = json.loads(repo.read_bytes(name))
        m["hash_kv"]["hash"] = (m["hash_kv"]["hash"] + 1) % 2**32
        repo.write_bytes(name, json.dumps(m).encode())
    r = cli("backups", "drill", url, *ep, "--temp-dir", str(work), "--id", b["id"], "-w", "json")
    assert r.code == 1 and "unproven" in r.err
    [d] = json.loads(r.out)["drills"]
    assert d["figures"]["hash_kv"]["ok"] is False
    [b] = json.loads(cli("backups", "list", url, *ep, "-w", "json").out)["backups"]
    assert b["proven"] is False and b["state"] == "complete"
