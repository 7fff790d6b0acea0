"""One contract, every backend: local directories and a real S3 gateway (SeaweedFS)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from etcdwarden.errors import UsageError
from etcdwarden.repository.base import ObjectNotFound, Repository, RepositoryError, RepositoryOptions, open_repository
from etcdwarden.repository.local import LocalRepository
from etcdwarden.repository.location import REGISTRY, normalize, scheme_of
from etcdwarden.repository.objectstore import AzureRepository, GCSRepository, S3Repository
from tests.repository.seaweed import SeaweedS3


def test_write_commit_list_read_delete(any_repo: Repository) -> None:
    assert any_repo.list() == []
    blob = os.urandom(3 * 1024 * 1024 + 17)
    with any_repo.open_write("snapshot_2026-01-01_000000.db") as w:
        for i in range(0, len(blob), 65536):
            w.write(blob[i:i + 65536])
        assert any_repo.stat("snapshot_2026-01-01_000000.db") is None  # not visible before commit
        w.commit()
    assert w.sha.hexdigest() == hashlib.sha256(blob).hexdigest() and w.size == len(blob)
    [info] = any_repo.list()
    assert info.name == "snapshot_2026-01-01_000000.db" and info.size == len(blob)
    assert info.mtime.tzinfo is not None
    st = any_repo.stat(info.name)
    assert st is not None and st.size == len(blob)
    assert b"".join(any_repo.open_read(info.name, 1 << 20)) == blob
    any_repo.delete(info.name)
    any_repo.delete(info.name)  # a missing object is not an error
    assert any_repo.list() == [] and any_repo.stat(info.name) is None
    with pytest.raises(ObjectNotFound):
        any_repo.read_bytes(info.name)


def test_discard_and_exception_leave_nothing(any_repo: Repository) -> None:
    w = any_repo.open_write("a.bin")
    w.write(os.urandom(9 * 1024 * 1024))  # more than one S3 part: a multipart upload is under way
    w.discard()
    with pytest.raises(RuntimeError), any_repo.open_write("b.bin") as w2:
        w2.write(os.urandom(1024))
        raise RuntimeError("boom")
    with any_repo.open_write("c.bin") as w3:  # left without commit(): abandoned
        w3.write(b"x")
    assert any_repo.list() == []
    if isinstance(any_repo, LocalRepository):
        assert sorted(os.listdir(any_repo.directory)) == []  # no .part left either


def test_overwrite_replaces_whole_object(any_repo: Repository) -> None:
    any_repo.write_bytes("x", b"first version")
    any_repo.write_bytes("x", b"second")
    assert any_repo.read_bytes("x") == b"second"


def test_names_are_plain(any_repo: Repository) -> None:
    for bad in ("../x", "a/b", "", ".", ".."):
        with pytest.raises(UsageError):
            any_repo.open_write(bad)
    with pytest.raises(RepositoryError):
        w = any_repo.open_write("y")
        w.commit()
        w.write(b"late")


@pytest.mark.unit
def test_local_ignores_directories_and_never_deletes_them(tmp_path: Path) -> None:
    repo = LocalRepository(tmp_path)
    (tmp_path / "lost+found").mkdir()
    (tmp_path / "lost+found" / "f").write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    assert [o.name for o in repo.list()] == ["notes.txt"]
    with pytest.raises(RepositoryError):
        repo.delete("lost+found")
    assert (tmp_path / "lost+found" / "f").exists()


@pytest.mark.unit
def test_local_write_is_0600(tmp_path: Path) -> None:
    repo = open_repository(tmp_path / "new" / "repo")
    repo.write_bytes("f", b"data")
    assert (tmp_path / "new" / "repo" / "f").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "new" / "repo").stat().st_mode & 0o777 == 0o700


@pytest.mark.unit
def test_registry_and_urls(tmp_path: Path) -> None:
    assert set(REGISTRY) == {"file", "s3", "gs", "az"}
    assert scheme_of("/var/backups") == "file" and scheme_of("relative/dir") == "file"
    assert scheme_of("s3://b/p") == "s3" and scheme_of(Path("s3://b/p")) == "s3"
    assert normalize(Path("s3://b/p")) == "s3://b/p"
    assert normalize(tmp_path) == f"file://{tmp_path}"
    assert isinstance(open_repository(tmp_path), LocalRepository)
    assert isinstance(open_repository(f"file://{tmp_path}"), LocalRepository)
    opts = RepositoryOptions(endpoint="http://127.0.0.1:1", access_key_id="AKIDSECRETISH", secret_access_key="sk")
    s3 = open_repository("s3://bucket/some/prefix", opts)
    assert isinstance(s3, S3Repository) and s3.url == "s3://bucket/some/prefix"
    assert "AKIDSECRETISH" not in repr(opts) and "sk" not in repr(opts).replace("ask", "")
    gs = open_repository("gs://bucket/p", RepositoryOptions())
    assert isinstance(gs, GCSRepository) and gs.url == "gs://bucket/p"
    az = open_repository("az://container/p", RepositoryOptions(access_key_id="account", secret_access_key="a2V5"))
    assert isinstance(az, AzureRepository) and az.url == "az://container/p"
    for bad in ("ftp://host/x", "s3://user:pw@bucket/p", "s3://bucket/p?secret_access_key=x", "file://host/x",
                "s3://bucket/p?color=red", "s3:///nobucket"):
        with pytest.raises(UsageError):
            open_repository(bad, opts)


def test_url_options_reach_the_store(seaweed: SeaweedS3) -> None:
    """Endpoint and region in the URL; credentials from the options (never in the URL)."""
    opts = seaweed.options(endpoint=None, region=None)
    repo = open_repository(f"{seaweed.url('urlopts')}?endpoint={seaweed.endpoint}&region=us-east-1", opts)
    repo.write_bytes("o", b"1")
    assert [o.name for o in repo.list()] == ["o"]
    assert repo.url == f"s3://{seaweed.bucket}/urlopts"


def test_wrong_credentials_fail_clearly_without_leaking(seaweed: SeaweedS3) -> None:
    opts = seaweed.options(secret_access_key="WrongSecretValue123")
    repo = open_repository(seaweed.url("denied"), opts)
    with pytest.raises(RepositoryError) as ei:
        repo.write_bytes("o", b"1")
    msg = str(ei.value)
    assert "denied" in msg and "WrongSecretValue123" not in msg and seaweed.access_key not in msg
    assert "\n" not in msg


def test_s3_prefixes_are_isolated_and_subkeys_ignored(seaweed: SeaweedS3) -> None:
    a = open_repository(seaweed.url("iso/a"), seaweed.options())
    b = open_repository(seaweed.url("iso/a/deeper"), seaweed.options())
    a.write_bytes("top", b"1")
    b.write_bytes("below", b"2")
    assert [o.name for o in a.list()] == ["top"]  # objects below the prefix are not this repository's
    assert [o.name for o in b.list()] == ["below"]


def test_configuration_from_aws_environment_only(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    repo = open_repository(seaweed.url("from-env"))  # http:// endpoint named by the environment: allowed
    repo.write_bytes("o", b"1")
    assert [o.name for o in repo.list()] == ["o"]
