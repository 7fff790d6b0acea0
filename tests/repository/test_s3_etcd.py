"""Real etcd, real backups, a real S3 gateway: upload, list, download, restore; and ``backup`` into S3
through the repository's writer (streamed, visible only after verification, manifest last)."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from etcdwarden.backup.run import BackupOptions, take_backup
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.repository.base import open_repository
from etcdwarden.repository.catalog import load_catalog
from etcdwarden.snapshot.errors import SnapshotCorrupt
from tests.backup.conftest import dump, load, restore_and_dump
from tests.cli_helpers import cli
from tests.repository.seaweed import SeaweedS3


def test_backup_to_s3_list_download_restore(etcd1: LocalCluster, seaweed: SeaweedS3, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    load(etcd1, 300)
    before = dump(etcd1.endpoints)
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "ca.crt").write_text("not really a certificate\n")
    local = tmp_path / "local"
    r = cli("backup", str(local), "--endpoints", etcd1.endpoints[0], "--resources", str(pki))
    assert r.code == 0, r.err
    url = seaweed.url("etcd-roundtrip")
    ep = ["--s3-endpoint", seaweed.endpoint]
    r = cli("backups", "copy", str(local), url, *ep)
    assert r.code == 0, r.err
    [b] = json.loads(cli("backups", "list", url, *ep, "-w", "json").out)["backups"]
    manifest = json.loads(next(local.glob("backup_*.json")).read_text())
    assert b["id"] == manifest["timestamp"] and b["state"] == "complete" and b["verified"]
    assert b["revision"] == manifest["revision"] and b["member"] == manifest["member"]["name"]
    # download into an empty directory: our verifier and the real etcdutl restore accept it
    down = tmp_path / "download"
    r = cli("backups", "copy", url, str(down), *ep, "--id", b["id"])
    assert r.code == 0, r.err
    verified = cli("snapshot", "verify", str(down))
    assert verified.code == 0, verified.err
    snap = next(down.glob("snapshot_*.db"))
    assert restore_and_dump(snap, tmp_path / "restore") == before


def test_snapshot_upload_visible_only_after_verification(etcd1: LocalCluster, seaweed: SeaweedS3,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """take_backup into S3 goes through the repository's writer: the structure walk, made from the stream (no
    copy of the database is written), ends while the multipart upload is still incomplete (the object is not
    visible); its summaries file is private and gone afterwards; a failed verification leaves no object."""
    from etcdwarden.snapshot.streamcheck import StreamCheck

    load(etcd1, 2000, value_size=4096)  # ~8 MB: more than one part
    url = seaweed.url("visible-after-verify")
    repo = open_repository(url, seaweed.options())
    seen: list[tuple[Path, bool, bool]] = []
    finish = StreamCheck.finish

    def spy(self: StreamCheck) -> Any:
        seen.append((self.spill_path, any(o.name.startswith("snapshot_") for o in repo.list()),
                     self.spill_path.is_file()))
        if fail:
            raise SnapshotCorrupt("broken on purpose")
        return finish(self)

    monkeypatch.setattr(StreamCheck, "finish", spy)

    def backup() -> str:
        async def go() -> str:
            async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
                res = await take_backup(c, BackupOptions(directory=url, repository_options=seaweed.options()))
                assert res.manifest_path is None and res.location == f"{url}/backup_{res.manifest['timestamp']}.json"
                return str(res.manifest["timestamp"])

        return asyncio.run(go())

    fail = True
    with pytest.raises(SnapshotCorrupt, match="broken on purpose"):
        backup()
    assert repo.list() == [] and seen[0][1] is False and seen[0][2]  # summaries were written; nothing visible
    assert not seen[0][0].exists()
    fail = False
    ts = backup()
    path, visible, existed = seen[1]
    assert not visible and existed and not path.exists() and not path.parent.exists()
    cat = load_catalog(repo)
    assert [(e.id, e.state) for e in cat.entries] == [(ts, "complete")]
    m = json.loads(repo.read_bytes(f"backup_{ts}.json"))
    assert m["verification"]["structure"] and m["status"]["totalKey"] > 2000
    assert m["verification"]["pages_checked"] > 2000


@pytest.mark.parametrize("extra", [["--verify", "hash"], ["--compress", "zstd"], []])
def test_backup_command_streams_into_s3(etcd1: LocalCluster, seaweed: SeaweedS3, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, extra: list[str]) -> None:
    """``etcdwarden backup s3://...`` streams the snapshot into the bucket; the manifest comes last."""
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    # the check's summaries go to a private directory of the system's temp dir, removed afterwards; one that
    # a killed run left (its process gone) is removed by the next run that checks a stream there
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / ".etcdwarden-tmp-999999999-1-0123456789ab"
    stale.mkdir()
    (stale / "summaries").write_bytes(b"x" * 100)
    load(etcd1, 400)
    before = dump(etcd1.endpoints)
    res_file = tmp_path / "manifest.yaml"
    res_file.write_text("kind: Pod\n")
    url = seaweed.url("cli-stream-" + "-".join(extra).strip("-").replace("--", ""))
    ep = ["--s3-endpoint", seaweed.endpoint]
    r = cli("backup", url, "--endpoints", etcd1.endpoints[0], "--resources", str(res_file), *ep, *extra)
    assert r.code == 0, r.err
    assert url in r.err  # says where the manifest went
    [b] = json.loads(cli("backups", "list", url, *ep, "-w", "json").out)["backups"]
    assert b["state"] == "complete" and b["verified"]
    checked = "--verify" not in extra  # with --verify hash nothing is walked: no summaries
    assert stale.exists() is not checked
    assert (f"removed {stale}: a backup's check summaries (etcd keys) left by an interrupted run (PID 999999999, "
            "gone)" in r.err) is checked, r.err
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".etcdwarden-tmp-")] == ([] if checked else [stale])
    down = tmp_path / "download"
    assert cli("backups", "copy", url, str(down), *ep).code == 0
    assert cli("snapshot", "verify", str(down)).code == 0
    snap = next(down.glob("snapshot_*"))
    if snap.name.endswith(".zst"):
        import zstandard

        plain = tmp_path / "plain.db"
        plain.write_bytes(zstandard.ZstdDecompressor().stream_reader(snap.open("rb")).read())
        snap = plain
    assert restore_and_dump(snap, tmp_path / "restore") == before
