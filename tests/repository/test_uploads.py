"""Issue 11 item 20: a killed object-store upload leaves an incomplete multipart upload; `backups list`
shows it, `backups prune` aborts it once older than --incomplete-grace; a failed upload is reported as
the upload's failure first, with what may remain. Real SeaweedFS, real SIGKILL."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.repository.base import RepositoryError, open_repository
from etcdwarden.repository.uploads import Credentials, sign
from tests.cli_helpers import cli
from tests.repository.seaweed import SeaweedS3

PART = 5 * 1024 * 1024
TS = "2026-01-01_000000"

# A writer that streams three parts of a snapshot into the repository, waits until they are stored,
# and then hangs, as a backup would mid-stream; the test SIGKILLs it.
WRITER = textwrap.dedent("""
    import os, sys, time
    from etcdwarden.repository.base import RepositoryOptions, open_repository
    repo = open_repository(sys.argv[1], RepositoryOptions(part_size=int(sys.argv[3]), max_retries=1))
    w = repo.open_write(sys.argv[2])
    for _ in range(3):
        w.write(os.urandom(int(sys.argv[3])))
    w.file.flush()  # the parts are stored: the multipart upload exists on the server
    print("ready", flush=True)
    time.sleep(600)
""")


def killed_upload(seaweed: SeaweedS3, url: str, name: str) -> None:
    env = {**os.environ, **seaweed.env(), "AWS_ENDPOINT_URL": seaweed.endpoint, "AWS_REGION": "us-east-1"}
    p = subprocess.Popen([sys.executable, "-c", WRITER, url, name, str(PART)], stdout=subprocess.PIPE, text=True,
                         env=env)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    finally:
        p.kill()
        p.wait(10)


def test_killed_upload_is_listed_then_aborted_by_prune(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    url = seaweed.url("killed-upload")
    ep = ["--s3-endpoint", seaweed.endpoint]
    killed_upload(seaweed, url, f"snapshot_{TS}.db")
    killed_upload(seaweed, url, "someone-elses.bin")  # not a name of ours: shown, never aborted
    killed_upload(seaweed, seaweed.url("killed-upload-other"), f"snapshot_{TS}.db")  # another prefix
    doc = json.loads(cli("backups", "list", url, *ep, "-w", "json").out)
    assert doc["backups"] == [] and doc["incomplete_uploads_note"] is None
    assert sorted(u["name"] for u in doc["incomplete_uploads"]) == [f"snapshot_{TS}.db", "someone-elses.bin"]
    r = cli("backups", "list", url, *ep)
    assert r.code == 0 and "2 incomplete upload(s)" in r.err and f"snapshot_{TS}.db" in r.err
    # within the grace period (it may be a backup in progress): left alone
    r = cli("backups", "prune", url, *ep, "-w", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["uploads_aborted"] == []
    assert len(json.loads(cli("backups", "list", url, *ep, "-w", "json").out)["incomplete_uploads"]) == 2
    r = cli("backups", "prune", url, *ep, "--incomplete-grace", "0s", "--dry-run", "-w", "json")
    assert [u["name"] for u in json.loads(r.out)["uploads_aborted"]] == [f"snapshot_{TS}.db"]
    assert len(json.loads(cli("backups", "list", url, *ep, "-w", "json").out)["incomplete_uploads"]) == 2
    r = cli("backups", "prune", url, *ep, "--incomplete-grace", "0s")
    assert r.code == 0, r.err
    assert "aborted 1 incomplete upload(s)" in r.err and "abort" in r.out
    doc = json.loads(cli("backups", "list", url, *ep, "-w", "json").out)
    assert [u["name"] for u in doc["incomplete_uploads"]] == ["someone-elses.bin"]
    other = json.loads(cli("backups", "list", seaweed.url("killed-upload-other"), *ep, "-w", "json").out)
    assert [u["name"] for u in other["incomplete_uploads"]] == [f"snapshot_{TS}.db"]  # another prefix: untouched


@pytest.mark.unit
def test_uploads_of_stores_that_cannot_list_them_are_a_note(tmp_path: Path) -> None:
    from etcdwarden.repository.uploads import pending_uploads

    gs = open_repository("gs://bucket/prefix?endpoint=http://127.0.0.1:9")
    uploads, note = pending_uploads(gs)
    assert uploads == [] and note is not None and "AbortIncompleteMultipartUpload" in note
    local = open_repository(tmp_path)
    assert pending_uploads(local) == ([], None)


@pytest.mark.unit
def test_sigv4_matches_the_aws_documentation() -> None:
    """The two signed requests of the S3 documentation's SigV4 examples, signature for signature."""
    c = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    t = dt.datetime(2013, 5, 24, tzinfo=dt.UTC)
    h = sign("GET", "https://examplebucket.s3.amazonaws.com/?lifecycle", c, "us-east-1", t)
    assert h["Authorization"].endswith("Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
    h = sign("GET", "https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J", c, "us-east-1", t)
    assert h["Authorization"].endswith("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")


@contextlib.contextmanager
def private_seaweed(base: Path) -> Iterator[SeaweedS3]:
    server = SeaweedS3(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.backend
@pytest.mark.parametrize("when", ["before-close", "part-in-flight"])
def test_failed_upload_is_reported_first_with_what_may_remain(tmp_path: Path, when: str) -> None:
    """The store dies mid-upload. The error says the upload failed (not merely that an abort failed: obstore's
    close() reports the abort it tries after a failure) and that an incomplete upload may remain."""
    with private_seaweed(tmp_path / "weed") as s:
        repo = open_repository(s.url("dies"), s.options(part_size=PART, max_retries=1, retry_timeout=3))
        data = os.urandom(PART)
        with pytest.raises(RepositoryError) as info, repo.open_write(f"snapshot_{TS}.db") as w:
            for _ in range(3):
                w.write(data)
            if when == "before-close":
                time.sleep(2)  # every part so far stored: the last one and the completion fail in close()
            s.kill()
            if when == "part-in-flight":
                time.sleep(0.5)
            w.write(data[:1000])
            w.commit()
    msg = str(info.value)
    assert msg.startswith(f"upload failed for {s.url('dies')}/snapshot_{TS}.db: "), msg
    assert "an incomplete multipart upload may remain" in msg and "backups prune" in msg
    if "DELETE" in msg:  # the abort's error, when that is all the store library gives: named as such
        assert "did not complete, and aborting it failed too" in msg
    assert s.secret_key not in msg
