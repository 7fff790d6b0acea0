"""The checks of a snapshot's etcd content, one leaf page at a time (the bbolt walk finds the pages).

``key`` bucket: every entry is a 17-byte revision key (18 with the tombstone mark ``t``) whose value parses
as an ``mvccpb.KeyValue`` with a consistent ``mod_revision``, ``create_revision`` and ``version`` (an empty
value is etcdutl's ``--bump-revision`` marker). ``meta`` bucket: ``consistent_index`` is 8 bytes.
"""

from __future__ import annotations

import struct
from typing import Any

from google.protobuf.message import DecodeError

from etcdwarden.etcd.api.mvccpb import kv_pb2
from etcdwarden.snapshot.bbolt import Leaf
from etcdwarden.snapshot.errors import SnapshotCorrupt

_REV = struct.Struct(">qBq")


def check_meta_leaf(leaf: Leaf) -> None:
    """A leaf of the ``meta`` bucket."""
    for key, value, _ in leaf.items():
        if key == b"consistent_index" and len(value) != 8:
            raise SnapshotCorrupt(f"meta bucket: consistent_index is {len(value)} bytes, expected 8")


def _where(buf: Any, ks: int, ke: int) -> str:
    return f"key bucket entry {bytes(buf[ks:ke]).hex()}"


def check_key_leaf(leaf: Leaf) -> int:
    """A leaf of the ``key`` bucket; its number of entries."""
    # a fresh message per leaf: re-parsing into one message grows its upb arena without bound
    kv = kv_pb2.KeyValue()
    buf = leaf.buf
    unpack = _REV.unpack_from
    parse = kv.ParseFromString
    for flags, ks, ke, ve in leaf.entries:  # the hot loop of a structure check: nothing made that is not needed
        n = ke - ks
        if flags or n < 17 or n > 18 or buf[ks + 8] != 0x5F or (n == 18 and buf[ks + 17] != 0x74):
            where = _where(buf, ks, ke)
            if flags:
                raise SnapshotCorrupt(f"{where}: unexpected nested bucket")
            raise SnapshotCorrupt(f"{where}: not a revision key (8-byte main, '_', 8-byte sub[, 't'])")
        main, _, sub = unpack(buf, ks)
        if main < 0 or sub < 0:
            raise SnapshotCorrupt(f"{_where(buf, ks, ke)}: negative revision {main}_{sub}")
        fields = _large_keyvalue(buf, ke, ve) if ve - ke >= LARGE_VALUE else None
        if fields is None:
            try:
                parse(buf[ke:ve])
            except DecodeError as e:
                raise SnapshotCorrupt(f"{_where(buf, ks, ke)} (revision {main}_{sub}): value is not a KeyValue: "
                                      f"{e}") from e
            fields = (kv.key, kv.create_revision, kv.mod_revision, kv.version)
        kv_key, create, mod, version = fields
        if n == 18:
            if not kv_key:
                raise SnapshotCorrupt(f"{_where(buf, ks, ke)} (revision {main}_{sub}): tombstone without a key")
        # an empty value is the --bump-revision marker of etcdutl restore
        elif ve > ke and (not kv_key or mod != main or not 0 < create <= main or version < 1):
            raise SnapshotCorrupt(
                f"{_where(buf, ks, ke)} (revision {main}_{sub}): inconsistent KeyValue (key {kv_key[:64]!r}, "
                f"create {create}, mod {mod}, version {version})"
            )
    return len(leaf.entries)


#: values from this size on are read in place (:func:`_large_keyvalue`): parsing them would copy the value twice
LARGE_VALUE = 16 * 1024
_KV_FIELDS = (0x0A, 0x10, 0x18, 0x20, 0x2A, 0x30)  # key, create_revision, mod_revision, version, value, lease


def _large_keyvalue(buf: Any, start: int, end: int) -> tuple[bytes, int, int, int] | None:
    """``(key, create_revision, mod_revision, version)`` of the ``mvccpb.KeyValue`` at ``buf[start:end]``, read in
    place without copying its value, when the message has etcd's own layout (fields in number order, each at
    most once, lengths inside the message); ``None`` for anything else, which the full protobuf parser then
    judges (so nothing is accepted here that it would refuse)."""
    pos, nxt = start, 0
    key = b""
    ints = [0, 0, 0, 0]  # [unused], create_revision, mod_revision, version
    while pos < end:
        tag = buf[pos]
        pos += 1
        try:
            i = _KV_FIELDS.index(tag, nxt)
        except ValueError:
            return None
        nxt = i + 1
        num, shift = 0, 0
        while True:  # a varint: the field's value, or the length of a bytes field
            if pos >= end or shift > 63:
                return None
            b = buf[pos]
            pos += 1
            num |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        if tag & 7 == 2:
            if num > end - pos:
                return None
            if i == 0:
                key = bytes(buf[pos : pos + num])
            pos += num
        elif i < 4:
            num &= (1 << 64) - 1  # bits past 64 are dropped, as protobuf does
            ints[i] = num - (1 << 64) if num >= 1 << 63 else num  # int64
    return key, ints[1], ints[2], ints[3]
