"""Real etcd, real backups, a real S3 gateway: upload, list, download, restore; and ``backup`` into S3
through :class:`~etcdwarden.repository.target.BackupTarget` (streaming sinks and publish)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from etcdwarden.backup.naming import BackupNames, timestamp
from etcdwarden.backup.run import BackupOptions, take_backup
from etcdwarden.backup.stream import TrailerChecker
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.repository.base import open_repository
from etcdwarden.repository.catalog import load_catalog
from etcdwarden.repository.target import BackupTarget, RepositorySink
from etcdwarden.snapshot.verify import verify_db
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


async def _stream_into(endpoint: str, sink: RepositorySink) -> None:
    checker = TrailerChecker()
    config = ClientConfig.from_strings([endpoint])
    async with EtcdClient(config) as c:
        async for chunk in c.snapshot(config.endpoints[0]):
            blob = bytes(chunk.blob)
            checker.feed(blob, int(chunk.remaining_bytes))
            sink.write(blob)
    checker.result()


def test_streaming_sink_appears_only_on_commit(etcd1: LocalCluster, seaweed: SeaweedS3, tmp_path: Path) -> None:
    """The drop-in for FileSink: streams to S3, keeps a local copy to verify, visible only on commit."""
    load(etcd1, 2000, value_size=4096)  # ~8 MB: more than one part
    url = seaweed.url("stream-sink")
    with BackupTarget(url, seaweed.options()) as target:
        assert not target.local and target.staging.is_dir()
        names = BackupNames(timestamp())
        sink = target.sink(names.snapshot)
        assert isinstance(sink, RepositorySink)
        asyncio.run(_stream_into(etcd1.endpoints[0], sink))
        sink.finish()
        verify_db(sink.part, display=sink.path.name)  # the local copy is the bytes uploaded
        assert target.repo.stat(names.snapshot) is None  # not visible before commit (i.e. verification)
        sink.commit()
        assert not sink.part.exists()
        doc = {"timestamp": names.ts, "verified": True,
               "files": {names.snapshot: {"sha256": sink.sha.hexdigest(), "size": sink.size}}}
        target.write_manifest(names.manifest, json.dumps(doc).encode())
        staging = target.staging
    assert not staging.exists()
    repo = open_repository(url, seaweed.options())
    [e] = load_catalog(repo).entries
    assert e.good and e.id == names.ts
    # an abandoned sink leaves nothing
    with BackupTarget(url, seaweed.options()) as target:
        s2 = target.sink(BackupNames("2030-01-01_000000").snapshot)
        s2.write(os.urandom(9 * 1024 * 1024))
        s2.discard()
    assert [x.id for x in load_catalog(repo).entries] == [names.ts]


def test_take_backup_then_publish(etcd1: LocalCluster, seaweed: SeaweedS3) -> None:
    """The non-streaming integration: take_backup into the target's staging dir, then publish()."""
    load(etcd1, 100)
    url = seaweed.url("publish")
    with BackupTarget(url, seaweed.options()) as target:

        async def go() -> str:
            async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
                res = await take_backup(c, BackupOptions(directory=target.staging))
                return str(res.manifest["timestamp"])

        ts = asyncio.run(go())
        target.publish(ts)
    cat = load_catalog(open_repository(url, seaweed.options()))
    assert [(e.id, e.state) for e in cat.entries] == [(ts, "complete")]


@pytest.mark.parametrize("extra", [["--verify", "hash"], ["--compress", "zstd"], []])
def test_backup_command_streams_into_s3(etcd1: LocalCluster, seaweed: SeaweedS3, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, extra: list[str]) -> None:
    """``etcdwarden backup s3://...`` streams the snapshot into the bucket; the manifest comes last."""
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the staging dir must be gone afterwards
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
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("etcdwarden-backup-")]
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
