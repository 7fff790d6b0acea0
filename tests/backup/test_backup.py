"""``etcdwarden backup`` against real etcd: files, manifest, restore, compression, age, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from etcdwarden.backup.run import BackupOptions, take_backup
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2_grpc as rpc
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.fsutil import dir_lock
from etcdwarden.local.cluster import LocalCluster
from tests.backup.conftest import age_binary, dump, etcdutl, load, restore_and_dump
from tests.certs import issue, make_ca
from tests.cli_helpers import cli
from tests.conftest import ALICE_PASSWORD, ROOT_PASSWORD


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".etcdwarden.lock"))


def test_backup_restores_with_etcdutl(etcd3: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from etcdwarden.repository.local import LocalWriter

    direct: list[str] = []  # the objects written past the page cache (whole blocks, O_DIRECT)
    put = LocalWriter._put_direct

    def spy(self: LocalWriter, upto: int) -> None:
        direct.append(self.name)
        put(self, upto)

    monkeypatch.setattr(LocalWriter, "_put_direct", spy)
    load(etcd3, 500)
    before = dump(etcd3.endpoints)
    pki = tmp_path / "pki"
    ca, ca_key = make_ca(pki)
    issue(pki, ca, ca_key, "fresh-server", server=True, client=False)  # issued minutes ago
    out = tmp_path / "backups"
    r = cli("backup", str(out), "--endpoints", ",".join(etcd3.endpoints), "--resources", str(pki))
    assert r.code == 0, r.err
    assert set(direct) == {n for n in _files(out) if n.startswith("snapshot_")}, direct
    names = _files(out)
    assert len(names) == 3, names
    snap = out / next(n for n in names if n.startswith("snapshot_"))
    manifest_path = out / next(n for n in names if n.startswith("backup_"))
    bundle = next(n for n in names if n.startswith("static_kuberesources_"))
    ts = manifest_path.name[len("backup_"):-len(".json")]
    assert snap.name == f"snapshot_{ts}.db" and bundle == f"static_kuberesources_{ts}.tar.gz"
    # modes: files 0600, directory 0700
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for n in names:
        assert stat.S_IMODE((out / n).stat().st_mode) == 0o600, n
    # the last stdout line is the seed script's JSON, equal to etcdutl's own status
    line = json.loads(r.out.strip().splitlines()[-1])
    theirs = json.loads(etcdutl("snapshot", "status", str(snap), "-w", "json").stdout)
    assert line == theirs
    m = json.loads(manifest_path.read_text())
    assert m["verified"] is True and m["verification"]["structure"] is True
    assert m["files"][snap.name]["sha256"] == hashlib.sha256(snap.read_bytes()).hexdigest()
    assert m["files"][bundle]["size"] == (out / bundle).stat().st_size
    assert m["status"] == theirs and m["revision"] == theirs["revision"]
    assert m["member"]["was_leader"] is False  # a follower is preferred
    assert m["etcd"]["server_version"] == "3.5.1"
    assert any("24 hours" in c["problem"] for c in m["resources"]["certificates"])
    assert "24 hours" in r.err
    # our own verifier accepts the directory
    v = cli("snapshot", "verify", str(out))
    assert v.code == 0, v.err
    # the restored etcd serves exactly the keys and values of the cluster at backup time
    assert restore_and_dump(snap, tmp_path / "restore") == before


def test_member_choice(etcd3: LocalCluster, tmp_path: Path) -> None:
    load(etcd3, 50)
    r = cli("backup", str(tmp_path / "b"), "--endpoints", etcd3.endpoints[0], "--member", "m2", "-w", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["member"]["name"] == "m2"
    r = cli("backup", str(tmp_path / "c"), "--endpoints", etcd3.endpoints[0], "--member", "nope")
    assert r.code == 2 and "--member" in r.err


def test_zstd(etcd1: LocalCluster, tmp_path: Path) -> None:
    import zstandard

    load(etcd1, 300)
    out = tmp_path / "z"
    r = cli("backup", str(out), "--endpoints", etcd1.endpoints[0], "--compress", "zstd")
    assert r.code == 0, r.err
    names = _files(out)
    zst = out / next(n for n in names if n.endswith(".db.zst"))
    assert not any(n.endswith(".db") for n in names) and not any(".part" in n or ".verify" in n for n in names)
    raw = zstandard.ZstdDecompressor().stream_reader(zst.open("rb")).read()
    assert hashlib.sha256(raw[:-32]).digest() == raw[-32:]
    m = json.loads((out / next(n for n in names if n.startswith("backup_"))).read_text())
    assert m["verification"]["roundtrip"] is True and m["snapshot"]["compression"] == "zstd"
    plain = tmp_path / "plain.db"
    plain.write_bytes(raw)
    assert json.loads(etcdutl("snapshot", "status", str(plain), "-w", "json").stdout) == m["status"]
    # walked from the stream (no plain copy was written): every page the walk of the file reaches
    from etcdwarden.snapshot.verify import verify_db

    assert m["verification"]["structure"] and m["verification"]["pages_checked"] == verify_db(plain).pages


@pytest.mark.parametrize("compress", [[], ["--compress", "zstd"]])
def test_structure_is_checked_from_the_stream(etcd1: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              compress: list[str]) -> None:
    """A backup's structure (plain or compressed) is walked from the stream itself: damage that only the
    stream's check sees (a meta page) fails the backup, and nothing is left behind (no snapshot, no summaries
    file)."""
    from etcdwarden.snapshot import streamcheck

    feed = streamcheck.StreamCheck.feed

    def damaged(self: streamcheck.StreamCheck, data: bytes) -> None:
        if self.received == 0:
            data = bytes([*data[:16], data[16] ^ 0xFF, *data[17:]])  # meta page 0's magic
        feed(self, data)

    monkeypatch.setattr(streamcheck.StreamCheck, "feed", damaged)
    out = tmp_path / "z"
    r = cli("backup", str(out), "--endpoints", etcd1.endpoints[0], *compress)
    assert r.code != 0 and "meta page 0 is invalid: bad magic" in r.err, r.err
    assert not [n for n in _files(out) if n.startswith((".snap", "snap", "backup_"))], _files(out)


def test_age_encrypted_decrypts_with_age_cli(etcd1: LocalCluster, tmp_path: Path) -> None:
    age = age_binary()
    keygen = age.parent / "age-keygen"
    ident = tmp_path / "key.txt"
    subprocess.run([str(keygen), "-o", str(ident)], check=True, capture_output=True)
    recipient = next(ln.split(": ")[1] for ln in ident.read_text().splitlines() if "public key" in ln)
    load(etcd1, 300)
    before = dump(etcd1.endpoints)
    out = tmp_path / "enc"
    res_file = tmp_path / "encryption-config.yaml"
    res_file.write_text("kind: EncryptionConfiguration\n")
    r = cli("backup", str(out), "--endpoints", etcd1.endpoints[0], "--compress", "zstd", "--encrypt-to", recipient,
            "--resources", str(res_file))
    assert r.code == 0, r.err
    names = _files(out)
    enc = out / next(n for n in names if n.endswith(".db.zst.age"))
    assert any(n.endswith(".tar.gz.age") for n in names)
    # nothing in the directory holds the snapshot in clear
    assert not any(n.endswith((".db", ".db.zst")) for n in names)
    dec = tmp_path / "dec.db.zst"
    subprocess.run([str(age), "-d", "-i", str(ident), "-o", str(dec), str(enc)], check=True)
    import zstandard

    plain = tmp_path / "dec.db"
    plain.write_bytes(zstandard.ZstdDecompressor().stream_reader(dec.open("rb")).read())
    assert restore_and_dump(plain, tmp_path / "restore") == before
    # our offline tools read it given the identity
    s = cli("snapshot", "status", str(enc), "--identity", str(ident), "-w", "json")
    assert s.code == 0, s.err
    assert json.loads(s.out) == json.loads(etcdutl("snapshot", "status", str(plain), "-w", "json").stdout)


def test_bad_recipient_and_missing_resources(etcd1: LocalCluster, tmp_path: Path) -> None:
    out = tmp_path / "x"
    r = cli("backup", str(out), "--endpoints", etcd1.endpoints[0], "--encrypt-to", "age1notakey")
    assert r.code == 2 and "recipient" in r.err
    r = cli("backup", str(out), "--endpoints", etcd1.endpoints[0], "--resources", str(tmp_path / "missing"))
    assert r.code == 2 and "not found" in r.err
    assert not out.exists() or _files(out) == []


def test_no_quorum_refused_then_forced(etcd3: LocalCluster, tmp_path: Path) -> None:
    load(etcd3, 50)
    etcd3.stop_member("m2")
    etcd3.stop_member("m3")
    out = tmp_path / "q"
    args = ["backup", str(out), "--endpoints", ",".join(etcd3.endpoints), "--dial-timeout", "1s",
            "--command-timeout", "2s"]
    r = cli(*args)
    assert r.code == 3, r.err
    assert "no quorum" in r.err and "--force" in r.err
    assert not out.exists() or _files(out) == []
    r = cli(*args, "--force")
    assert r.code == 0, r.err
    assert "no quorum" in r.err


def _alarm(endpoint: str, alarm: int) -> None:
    async def go() -> None:
        async with grpc.aio.insecure_channel(endpoint.split("://")[1]) as ch:
            m = rpc.MaintenanceStub(ch)
            st = await m.Status(pb.StatusRequest())
            await m.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=st.header.member_id,
                                          alarm=alarm))  # type: ignore[arg-type]

    asyncio.run(go())


def test_nospace_warns_corrupt_refuses(etcd1: LocalCluster, tmp_path: Path) -> None:
    load(etcd1, 20)
    _alarm(etcd1.endpoints[0], pb.NOSPACE)
    r = cli("backup", str(tmp_path / "n"), "--endpoints", etcd1.endpoints[0])
    assert r.code == 0, r.err
    assert "NOSPACE" in r.err
    _alarm(etcd1.endpoints[0], pb.CORRUPT)
    r = cli("backup", str(tmp_path / "c"), "--endpoints", etcd1.endpoints[0])
    assert r.code == 3 and "CORRUPT" in r.err and "--force" in r.err


def test_member_dies_mid_stream_retries_elsewhere(etcd3: LocalCluster, tmp_path: Path) -> None:
    load(etcd3, 2000, value_size=2048)  # a few MB: many 32 KiB chunks
    out = tmp_path / "r"
    killed: list[str] = []

    def progress(member: str, got: int, total: int) -> None:
        if not killed and got > 256 * 1024:
            killed.append(member)
            pid = etcd3.member(member).pid
            assert pid
            os.kill(pid, signal.SIGKILL)

    async def go() -> object:
        cfg = ClientConfig.from_strings(etcd3.endpoints, dial_timeout=1.0)
        async with EtcdClient(cfg) as c:
            return await take_backup(c, BackupOptions(directory=out), progress)

    result = asyncio.run(go())
    assert killed
    m = result.manifest  # type: ignore[attr-defined]
    assert m["member"]["name"] != killed[0]
    assert any("retried" in w for w in result.warnings)  # type: ignore[attr-defined]
    names = _files(out)
    assert len(names) == 2 and not any(".part" in n for n in names)


def test_lock_held_fails_clearly(etcd1: LocalCluster, tmp_path: Path) -> None:
    out = tmp_path / "l"
    out.mkdir(mode=0o700)
    with dir_lock(out):
        r = cli("backup", str(out), "--endpoints", etcd1.endpoints[0])
    assert r.code == 1
    assert "another etcdwarden run" in r.err and "--lock-wait" in r.err


def test_disk_full_is_clean(etcd1: LocalCluster, tmp_path: Path) -> None:
    load(etcd1, 600, value_size=1024)
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        r1 = cli("backup", str(mnt / "b"), "--endpoints", etcd1.endpoints[0])
        assert r1.code == 0, r1.err
        first = {n: (mnt / "b" / n).read_bytes() for n in _files(mnt / "b")}
        load(etcd1, 3000, value_size=1024)  # grow the db so a second copy cannot fit
        r2 = cli("backup", str(mnt / "b"), "--endpoints", etcd1.endpoints[0])
        assert r2.code == 1
        assert "no space left" in r2.err and "Traceback" not in r2.err
        assert {n: (mnt / "b" / n).read_bytes() for n in _files(mnt / "b")} == first
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_tls_auth_backup_needs_root(etcd_tls_auth: LocalCluster, tmp_path: Path) -> None:
    t = etcd_tls_auth.tls
    assert t
    base = ["--endpoints", etcd_tls_auth.endpoints[0], "--cacert", str(t.ca), "--cert", str(t.client_cert),
            "--key", str(t.client_key)]
    r = cli("backup", str(tmp_path / "a"), *base, "--user", f"root:{ROOT_PASSWORD}")
    assert r.code == 0, r.err
    r = cli("backup", str(tmp_path / "b"), *base, "--user", f"alice:{ALICE_PASSWORD}")
    assert r.code == 1 and "root role" in r.err
    assert not any(".part" in n for n in _files(tmp_path / "b"))


@pytest.mark.parametrize("verify", ["hash", "full"])
def test_status_line_has_real_values_or_leaves_them_out(etcd1: LocalCluster, tmp_path: Path, verify: str) -> None:
    """The seed script's JSON line: ``--verify hash`` computes no hash/totalKey and leaves them out (never
    ``null``); ``--verify full`` prints the snapshot's real status, as ``snapshot status`` computes it."""
    r = cli("backup", str(tmp_path / "h"), "--endpoints", etcd1.endpoints[0], "--verify", verify)
    assert r.code == 0, r.err
    line = json.loads(r.out.strip().splitlines()[-1])
    assert None not in line.values(), line
    [snap] = (tmp_path / "h").glob("snapshot_*.db")
    st = json.loads(cli("snapshot", "status", str(snap), "-w", "json").out)
    m = json.loads(next((tmp_path / "h").glob("backup_*.json")).read_text())
    if verify == "hash":
        assert line == {"revision": m["revision"], "totalSize": m["db_size"]}
        assert m["status"] is None and not m["verification"]["structure"]
    else:
        assert line == st and line["totalKey"] > 0 and m["verification"]["structure"]


def test_encryption_config_recorded_and_migration_refuses(etcd1: LocalCluster, tmp_path: Path) -> None:
    cfg = tmp_path / "enc.yaml"
    r = cli("encryption", "enable", "--config", str(cfg), "--endpoints", etcd1.endpoints[0])
    assert r.code == 0, r.err
    out = tmp_path / "b"
    r = cli("backup", str(out), "--endpoints", etcd1.endpoints[0], "--encryption-config", str(cfg), "-w", "json")
    assert r.code == 0, r.err
    m = json.loads(r.out)
    assert m["encryption_at_rest"]["key_names"] == ["key1"]
    assert str(cfg) in m["resources"]["paths"]
    # a migration that has not completed: the backup would be only partly encrypted
    (tmp_path / "enc.yaml.migration-state.json").write_text('{"version": 1, "complete": false}')
    r = cli("backup", str(tmp_path / "c"), "--endpoints", etcd1.endpoints[0], "--encryption-config", str(cfg))
    assert r.code == 3 and "migration is in progress" in r.err and "--force" in r.err


def test_zstd_output_that_decodes_to_other_bytes_fails(etcd1: LocalCluster, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The round-trip check: compressed output whose decoding differs from the bytes received (here one byte
    of each decoded block changed) fails the backup, and nothing is left behind."""
    import zstandard

    real = zstandard.ZstdDecompressor

    class Garbling:
        def stream_writer(self, writer: Any, **kw: Any) -> object:
            class Garbled:  # between the decoder and what takes its output
                def write(self, data: bytes) -> int:
                    return int(writer.write(bytes([data[0] ^ 1]) + data[1:] if data else data))

            garbled: Any = Garbled()
            return real().stream_writer(garbled, **kw)

    monkeypatch.setattr(zstandard, "ZstdDecompressor", Garbling)
    out = tmp_path / "z"
    r = cli("backup", str(out), "--endpoints", etcd1.endpoints[0], "--compress", "zstd")
    assert r.code != 0 and "does not decompress to the bytes received" in r.err, r.err
    assert not [n for n in _files(out) if n.startswith((".snap", "snap", "backup_"))], _files(out)
