"""``az://`` against a real Azurite blob service: blocked uploads, the catalog, ``backups copy`` both ways,
``backup`` streaming from a real etcd, configuration by URL, config file and environment, clear errors.

(The contract every backend shares — write/list/stat/read/delete, discard — runs on Azurite too, through
the ``any_repo`` fixture of ``test_backends.py`` and ``test_catalog.py``.)"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from etcdwarden.errors import UsageError
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.local.ports import free_port
from etcdwarden.repository.base import RepositoryError, open_repository
from etcdwarden.repository.catalog import load_catalog
from etcdwarden.repository.local import LocalRepository
from etcdwarden.repository.objectstore import AzureRepository
from tests.backup.conftest import dump, load, restore_and_dump
from tests.cli_helpers import cli
from tests.repository.azurite import DEV_ACCOUNT, DEV_KEY, Azurite
from tests.repository.fake import put_backup

IDS = ["2026-02-01_000000", "2026-02-01_010000", "2026-02-01_020000", "2026-02-01_030000"]


@pytest.fixture
def az_env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Azurite:
    """Account and key in the environment only, as a user would export them; nothing else of Azure's."""
    for k in list(os.environ):
        if k.startswith(("AZURE_", "AZURITE_")):
            monkeypatch.delenv(k)
    for k, v in azurite.env().items():
        monkeypatch.setenv(k, v)
    return azurite


def test_blocked_upload_invisible_until_commit_discard_leaves_nothing(azurite: Azurite) -> None:
    repo = open_repository(azurite.url("blocks"), azurite.options(part_size=1 << 20, max_concurrency=2))
    assert isinstance(repo, AzureRepository) and repo.url == f"az://{azurite.container}/blocks"
    blob = os.urandom(5 * (1 << 20) + 3)  # six blocks of 1 MiB (the last one short), then Put Block List
    with repo.open_write("snapshot_2026-02-01_000000.db") as w:
        for i in range(0, len(blob), 256 * 1024):
            w.write(blob[i:i + 256 * 1024])
        assert repo.stat(w.name) is None and repo.list() == []  # the blocks are uncommitted: invisible
        w.commit()
    assert w.sha.hexdigest() == hashlib.sha256(blob).hexdigest() and w.size == len(blob)
    [info] = repo.list()
    assert (info.name, info.size) == ("snapshot_2026-02-01_000000.db", len(blob)) and info.mtime.tzinfo is not None
    assert hashlib.sha256(b"".join(repo.open_read(info.name, 1 << 20))).digest() == hashlib.sha256(blob).digest()
    # abandoned uploads: nothing appears (Azure has no abort; uncommitted blocks are never listed and
    # expire by themselves), and a later upload of the same name is not polluted by them
    w2 = repo.open_write("abandoned.bin")
    w2.write(os.urandom(3 * (1 << 20)))
    w2.discard()
    with pytest.raises(RuntimeError), repo.open_write("abandoned.bin") as w3:
        w3.write(os.urandom(2 * (1 << 20)))
        raise RuntimeError("boom")
    assert [o.name for o in repo.list()] == [info.name] and repo.stat("abandoned.bin") is None
    repo.write_bytes("abandoned.bin", b"whole")
    assert repo.read_bytes("abandoned.bin") == b"whole"
    repo.delete("abandoned.bin")
    repo.delete(info.name)
    assert repo.list() == []


def test_cli_copy_local_to_azure_and_back(az_env: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    azurite = az_env
    local = LocalRepository(tmp_path / "src")
    docs = {i: put_backup(local, i, size=3 * 1024 * 1024 + 7) for i in IDS[:3]}
    put_backup(local, IDS[3], manifest=False)  # failed: never copied
    where = azurite.url("cli-copy")
    url = f"{where}?endpoint={azurite.endpoint}"
    r = cli("backups", "copy", str(tmp_path / "src"), url, "--dry-run")
    assert r.code == 0 and r.out.count("would copy") == 3, r.err
    assert json.loads(cli("backups", "list", url, "-w", "json").out)["backups"] == []
    r = cli("backups", "copy", str(tmp_path / "src"), url, "-w", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["copied"] == IDS[:3]
    r = cli("backups", "copy", str(tmp_path / "src"), url, "-w", "json")  # idempotent
    assert r.code == 0 and json.loads(r.out)["copied"] == [] and len(json.loads(r.out)["skipped"]) == 3
    doc = json.loads(cli("backups", "list", url, "-w", "json").out)
    assert [(b["id"], b["state"], b["verified"]) for b in doc["backups"]] == \
        [(i, "complete", True) for i in reversed(IDS[:3])]
    assert doc["backups"][0]["where"] == f"{where}/backup_{IDS[2]}.json"
    assert doc["backups"][0]["revision"] == 42 and doc["backups"][0]["encryption_keys"] == ["key1"]
    r = cli("backups", "show", url, IDS[1], "-w", "json")
    assert r.code == 0 and json.loads(r.out)["manifest"]["files"] == docs[IDS[1]]["files"]
    assert cli("backups", "delete", url, IDS[2]).code == 3  # the newest verified one needs --force
    r = cli("backups", "prune", url, "--max-number", "2")
    assert r.code == 0, r.err
    assert [b["id"] for b in json.loads(cli("backups", "list", url, "-w", "json").out)["backups"]] == IDS[2:0:-1]
    # Azure -> local, one backup: every file's sha256 is the manifest's, byte for byte the original
    r = cli("backups", "copy", url, str(tmp_path / "back"), "--id", IDS[1])
    assert r.code == 0, r.err
    back = sorted(os.listdir(tmp_path / "back"))
    assert back == sorted(n for n in os.listdir(tmp_path / "src") if IDS[1] in n)
    for name, want in docs[IDS[1]]["files"].items():
        data = (tmp_path / "back" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == want["sha256"] and len(data) == want["size"]
        assert data == (tmp_path / "src" / name).read_bytes()
    assert cli("backups", "copy", str(tmp_path / "src"), url, "--id", IDS[3]).code == 2
    # the same through a config file's `repository:` keys, with nothing in the environment
    for k in azurite.env():
        monkeypatch.delenv(k)
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"repository:\n  endpoint: {azurite.endpoint}\n  access_key_id: {azurite.account}\n"
                   f"  secret_access_key: {azurite.key}\n")
    r = cli("backups", "list", where, "--repository-config", str(cfg))
    assert r.code == 0 and IDS[2] in r.out and azurite.key not in r.out + r.err
    # a wrong key: exit 1, one clear line, no traceback, no secret
    wrong = base64.b64encode(os.urandom(64)).decode()
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace(azurite.key, wrong))
    r = cli("backups", "list", where, "--repository-config", str(bad))
    assert r.code == 1 and "AuthorizationFailure" in r.err and "403" in r.err, r.err
    assert wrong not in r.err and azurite.key not in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_backup_command_streams_into_azure(etcd1: LocalCluster, az_env: Azurite, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``etcdwarden backup az://...`` streams a real snapshot into Azurite; copy back, verify, restore."""
    azurite = az_env
    monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", azurite.endpoint)  # http:// named by the environment
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    load(etcd1, 1500, value_size=4096)  # ~6 MB
    before = dump(etcd1.endpoints)
    cfg = tmp_path / "repo.yaml"
    cfg.write_text("repository:\n  part_size: 2MiB\n")  # several blocks
    url = azurite.url("etcd-stream")
    r = cli("backup", url, "--endpoints", etcd1.endpoints[0], "--repository-config", str(cfg))
    assert r.code == 0, r.err
    assert url in r.err and azurite.key not in r.out + r.err
    [b] = json.loads(cli("backups", "list", url, "-w", "json").out)["backups"]
    assert b["state"] == "complete" and b["verified"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("etcdwarden-backup-")]
    down = tmp_path / "download"
    r = cli("backups", "copy", url, str(down))
    assert r.code == 0, r.err
    verified = cli("snapshot", "verify", str(down))
    assert verified.code == 0, verified.err
    assert restore_and_dump(next(down.glob("snapshot_*.db")), tmp_path / "restore") == before


def test_unreachable_endpoint_fails_clearly_and_bounded(azurite: Azurite) -> None:
    port = free_port()  # nothing listens there
    opts = azurite.options(endpoint=f"http://127.0.0.1:{port}/{azurite.account}", max_retries=2, init_backoff=0.1,
                           max_backoff=0.2, retry_timeout=5)
    repo = open_repository(azurite.url("nowhere"), opts)
    t0 = time.monotonic()
    with pytest.raises(RepositoryError) as ei:
        repo.write_bytes("o", b"1")
    assert time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert f"az://{azurite.container}/nowhere/o" in msg and "retries" in msg and "\n" not in msg
    assert azurite.key not in msg
    r = cli("backups", "list", f"{azurite.url('nowhere')}?endpoint=http://127.0.0.1:{port}/{azurite.account}")
    assert r.code == 1 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1


def test_missing_container_is_named(azurite: Azurite) -> None:
    repo = open_repository(azurite.url("p", container="no-such-container"), azurite.options())
    for action in (repo.list, lambda: repo.write_bytes("o", b"1")):
        with pytest.raises(RepositoryError) as ei:
            action()
        assert "container 'no-such-container' exist" in str(ei.value) and "ContainerNotFound" in str(ei.value)


def test_configuration_from_environment_only(az_env: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", az_env.endpoint)
    repo = open_repository(az_env.url("from-env"))
    repo.write_bytes("o", b"1")
    assert [o.name for o in repo.list()] == ["o"]
    # URL options: the endpoint in the query; S3's region is not an Azure option
    monkeypatch.delenv("AZURE_STORAGE_ENDPOINT")
    repo = open_repository(f"{az_env.url('from-env')}?endpoint={az_env.endpoint}")
    assert repo.read_bytes("o") == b"1"
    for bad in (f"{az_env.url('x')}?region=eu", f"{az_env.url('x')}?sig=abc"):
        with pytest.raises(UsageError):
            open_repository(bad)


def test_emulator_mode_from_environment(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    """``AZURE_STORAGE_USE_EMULATOR``: obstore's own Azurite mode (devstoreaccount1, its public key)."""
    for k in list(os.environ):
        if k.startswith(("AZURE_", "AZURITE_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", azurite.service)
    azurite.create_container("emulated", DEV_ACCOUNT, DEV_KEY)
    repo = open_repository("az://emulated/p")
    repo.write_bytes("o", b"emulated")
    assert [o.name for o in repo.list()] == ["o"] and repo.read_bytes("o") == b"emulated"


def test_catalog_on_azure(az_env: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", az_env.endpoint)
    repo = open_repository(az_env.url("catalog"))
    put_backup(repo, IDS[0])
    put_backup(repo, IDS[1], manifest=False)
    put_backup(repo, IDS[2], verified=False)
    repo.write_bytes("notes.txt", b"someone else's")
    cat = load_catalog(repo)
    assert {e.id: e.state for e in cat.entries} == {IDS[0]: "complete", IDS[1]: "incomplete",
                                                   IDS[2]: "unverified"}
    assert cat.unknown == ["notes.txt"] and cat.newest_good() is cat.get(IDS[0])
