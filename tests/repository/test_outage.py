"""The S3 server dies in the middle of an upload: bounded retries with backoff, then a clear failure;
no half backup becomes visible and the catalog stays consistent after the server is back."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.repository.base import CHUNK, RepositoryError, open_repository
from etcdwarden.repository.catalog import load_catalog
from etcdwarden.repository.local import LocalRepository
from etcdwarden.repository.prune import prune
from etcdwarden.repository.retention import IncompleteCleanup, RetentionConfig, RetentionNumber
from etcdwarden.repository.transfer import copy_backup, copy_backups
from tests.repository.fake import put_backup
from tests.repository.seaweed import SeaweedS3

pytestmark = pytest.mark.backend

GOOD, VICTIM = "2026-03-01_000000", "2026-03-01_010000"


class KillsServerMidway(LocalRepository):
    """A local source that kills the S3 server once ``after`` bytes of ``name`` have been read."""

    def __init__(self, directory: Path, server: SeaweedS3, name: str, after: int) -> None:
        super().__init__(directory, create=False)
        self.server, self.name, self.after = server, name, after
        self.killed_at: float | None = None

    def open_read(self, name: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        sent = 0
        for chunk in super().open_read(name, chunk_size):
            if name == self.name and sent >= self.after and self.killed_at is None:
                self.server.kill()
                self.killed_at = time.monotonic()
            sent += len(chunk)
            yield chunk


@pytest.mark.slow
def test_server_killed_mid_upload(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / "s3")
    server.start()
    try:
        src = LocalRepository(tmp_path / "src")
        put_backup(src, GOOD, size=1024)
        put_backup(src, VICTIM, size=48 * 1024 * 1024)  # six 8 MiB parts
        dst = open_repository(server.url("outage"), server.options(max_retries=3, init_backoff=0.2,
                                                                   max_backoff=1.0, retry_timeout=10))
        copy_backups(src, dst, ids=[GOOD])
        killer = KillsServerMidway(tmp_path / "src", server, f"snapshot_{VICTIM}.db", after=20 * 1024 * 1024)
        entry = load_catalog(src).get(VICTIM)
        with pytest.raises(RepositoryError) as ei:
            copy_backup(killer, dst, entry)
        assert killer.killed_at is not None
        elapsed = time.monotonic() - killer.killed_at
        assert elapsed < 30, f"gave up only after {elapsed:.1f}s: retries are not bounded"
        print(f"failed {elapsed:.2f}s after the server was killed")
        msg = str(ei.value)
        assert f"snapshot_{VICTIM}.db" in msg and "retries" in msg and "\n" not in msg
        assert server.secret_key not in msg and server.access_key not in msg
        # back up again: the half upload is nowhere, the earlier backup is intact
        server.start()
        cat = load_catalog(dst)
        assert [(e.id, e.state) for e in cat.entries] == [(GOOD, "complete")], cat.entries
        assert [o.name for o in dst.list() if VICTIM in o.name] == []
        # dying between the snapshot and the manifest: the snapshot is there, but never as a backup
        killer = KillsServerMidway(tmp_path / "src", server, f"static_kuberesources_{VICTIM}.tar.gz", after=0)
        with pytest.raises(RepositoryError):
            copy_backup(killer, dst, entry)
        server.start()
        cat = load_catalog(dst)
        assert [(e.id, e.state) for e in cat.entries] == [(GOOD, "complete"), (VICTIM, "incomplete")]
        assert [e.id for e in cat.good] == [GOOD]
        plan = prune(dst, RetentionConfig(number=RetentionNumber(1), incomplete=IncompleteCleanup(dt.timedelta(0))))
        assert plan.deleted == [VICTIM]
        # and a retry now succeeds
        copy_backups(src, dst)
        assert [(e.id, e.state) for e in load_catalog(dst).entries] == [(GOOD, "complete"), (VICTIM, "complete")]
    finally:
        server.stop()
