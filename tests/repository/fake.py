"""Fabricated backups: the files and manifest ``etcdwarden backup`` writes, with made-up contents."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from typing import Any

from etcdwarden.format.names import BackupNames, timestamp
from etcdwarden.repository.base import Repository


def ts_at(t: dt.datetime) -> str:
    return timestamp(t)


def put_backup(repo: Repository, ts: str, size: int = 4096, verified: bool = True, manifest: bool = True,
               resources: bool = True, keys: tuple[str, ...] = ("key1",), revision: int = 42,
               data: bytes | None = None) -> dict[str, Any]:
    """Write a backup's objects into ``repo`` (manifest last, as the backup code does)."""
    names = BackupNames(ts)
    files: dict[str, dict[str, Any]] = {}
    blobs = {names.snapshot: data if data is not None else os.urandom(size)}
    if resources:
        blobs[names.resources] = os.urandom(512)
    for name, blob in blobs.items():
        repo.write_bytes(name, blob)
        files[name] = {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    doc: dict[str, Any] = {
        "format": 1, "timestamp": ts, "cluster_id": "cafe", "member": {"id": "1", "name": "m2"},
        "revision": revision, "db_size": size, "snapshot": {"file": names.snapshot, "compression": None,
                                                            "encryption": None},
        "encryption_at_rest": {"key_names": list(keys)}, "files": files, "verified": verified}
    if manifest:
        repo.write_bytes(names.manifest, (json.dumps(doc, indent=2) + "\n").encode())
    return doc
