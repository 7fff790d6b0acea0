"""``snapshot inspect``: the keys of a snapshot as of its latest revision (or ``--rev R``).

The ``key`` bucket holds the MVCC history in revision order (``etcd-internals.md`` §2.9); replaying it
up to the wanted revision, with tombstones deleting keys, gives the key space a ``get --rev`` would
have returned. Revisions older than the snapshot's compaction cannot be reconstructed and are refused.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import DecodeError

from etcdwarden.etcd.api.mvccpb import kv_pb2
from etcdwarden.snapshot.bbolt import BoltFile
from etcdwarden.snapshot.errors import SnapshotCorrupt, SnapshotInputError
from etcdwarden.snapshot.status import KEY_BUCKET, iter_bucket

_MAIN = struct.Struct(">q")
T = TypeVar("T")


@dataclass
class KeySpace:
    """The live keys of a snapshot at ``revision`` (sorted by key)."""

    revision: int
    latest_revision: int
    compact_revision: int
    kvs: list[kv_pb2.KeyValue]

    def as_json(self, keys_only: bool = False) -> dict[str, Any]:
        """Shaped like ``etcdctl get -w json`` (keys and values base64) plus the snapshot revisions."""
        def one(kv: kv_pb2.KeyValue) -> dict[str, Any]:
            d: dict[str, Any] = {"key": base64.b64encode(kv.key).decode(), "create_revision": kv.create_revision,
                                 "mod_revision": kv.mod_revision, "version": kv.version}
            if not keys_only:
                d["value"] = base64.b64encode(kv.value).decode()
            if kv.lease:
                d["lease"] = kv.lease
            return d

        return {"header": {"revision": self.revision}, "latest_revision": self.latest_revision,
                "compact_revision": self.compact_revision, "kvs": [one(kv) for kv in self.kvs],
                "count": len(self.kvs)}


def _compact_revision(db: BoltFile) -> int:
    for key, value in iter_bucket(db, b"meta"):
        if key == b"finishedCompactRev":
            if len(value) < 8:
                raise SnapshotCorrupt(f"meta bucket: finishedCompactRev is {len(value)} bytes")
            rev: int = _MAIN.unpack_from(value)[0]
            return rev
    return 0


def replay(db: BoltFile, fn: Callable[[kv_pb2.KeyValue], T], prefix: bytes = b"",
           rev: int | None = None, on_delete: Callable[[bytes, int], None] | None = None,
           ) -> tuple[dict[bytes, T], int, int, int]:
    """Replay the ``key`` bucket up to ``rev``; return ``({key: fn(kv)}, rev, latest, compacted)``.
    ``on_delete(key, revision)`` is called for each deletion replayed."""
    compacted = _compact_revision(db)
    state: dict[bytes, T] = {}
    latest = 0
    for key, value in iter_bucket(db, KEY_BUCKET):
        if len(key) < 8:
            raise SnapshotCorrupt(f"key bucket: {key.hex()} is not a revision key")
        main: int = _MAIN.unpack_from(key)[0]
        latest = main
        if (rev is not None and main > rev) or not value:  # empty value: the --bump-revision marker
            continue
        kv = kv_pb2.KeyValue()  # fresh: a reused message's arena would grow with the bucket
        try:
            kv.ParseFromString(value)
        except DecodeError as e:
            raise SnapshotCorrupt(f"key bucket entry {key.hex()}: value is not a KeyValue: {e}") from e
        if not kv.key.startswith(prefix):
            continue
        if len(key) == 18 and key[17] == 0x74:
            state.pop(kv.key, None)
            if on_delete is not None:
                on_delete(kv.key, main)
        else:
            state[kv.key] = fn(kv)
    if rev is None:
        rev = latest
    elif rev > latest:
        raise SnapshotInputError(f"revision {rev} is newer than the snapshot's latest revision {latest}")
    elif rev < compacted:
        raise SnapshotInputError(f"revision {rev} has been compacted: it is older than the snapshot's compaction at "
                                 f"revision {compacted}, and the history before it is gone; use --rev {compacted} or "
                                 f"later (up to {latest})")
    elif rev < 1:
        raise SnapshotInputError(f"invalid revision {rev}")
    return state, rev, latest, compacted


def _keep(keys_only: bool) -> Callable[[kv_pb2.KeyValue], kv_pb2.KeyValue]:
    def fn(kv: kv_pb2.KeyValue) -> kv_pb2.KeyValue:
        if keys_only:
            kv.value = b""
        return kv

    return fn


def read_keys(path: str | os.PathLike[str], prefix: bytes = b"", rev: int | None = None,
              keys_only: bool = False) -> KeySpace:
    """The live keys (under ``prefix``) of a plain bbolt file at ``rev`` (default: latest)."""
    with BoltFile(path) as db:
        state, at, latest, compacted = replay(db, _keep(keys_only), prefix, rev)
    return KeySpace(at, latest, compacted, [state[k] for k in sorted(state)])
