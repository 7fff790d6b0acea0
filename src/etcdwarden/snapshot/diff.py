"""``snapshot diff A B``: keys added, changed and deleted from snapshot A to snapshot B.

Both sides are compared at their latest revision, by live value (a digest of it is kept per key, so
memory grows with the number of keys, not with the size of the values).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from etcdwarden.etcd.api.mvccpb import kv_pb2
from etcdwarden.snapshot.bbolt import BoltFile
from etcdwarden.snapshot.inspect import replay


def _digest(kv: kv_pb2.KeyValue) -> bytes:
    return hashlib.blake2b(kv.value, digest_size=16).digest()


def key_text(key: bytes) -> str:
    """A key for display: UTF-8 where possible, escapes for other bytes."""
    return key.decode("utf-8", "backslashreplace")


@dataclass
class SnapshotDiff:
    revision_a: int
    revision_b: int
    added: list[bytes]
    changed: list[bytes]
    deleted: list[bytes]

    @property
    def identical(self) -> bool:
        return not (self.added or self.changed or self.deleted)

    def as_json(self) -> dict[str, Any]:
        return {"revisionA": self.revision_a, "revisionB": self.revision_b,
                "added": [key_text(k) for k in self.added], "changed": [key_text(k) for k in self.changed],
                "deleted": [key_text(k) for k in self.deleted]}


def _latest(path: str | os.PathLike[str], prefix: bytes) -> tuple[dict[bytes, bytes], int]:
    with BoltFile(path) as db:
        state, rev, _latest_rev, _compacted = replay(db, _digest, prefix)
    return state, rev


def diff_snapshots(a: str | os.PathLike[str], b: str | os.PathLike[str], prefix: bytes = b"") -> SnapshotDiff:
    """Compare the live keys of two plain bbolt files."""
    sa, ra = _latest(a, prefix)
    sb, rb = _latest(b, prefix)
    added = sorted(k for k in sb if k not in sa)
    deleted = sorted(k for k in sa if k not in sb)
    changed = sorted(k for k, d in sb.items() if k in sa and sa[k] != d)
    return SnapshotDiff(ra, rb, added, changed, deleted)
