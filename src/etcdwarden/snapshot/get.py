"""``snapshot get``: one key of a snapshot, as of its latest revision (or ``--rev R``), and what its value is.

The key space is replayed from the ``key`` bucket exactly as ``snapshot inspect`` does
(:func:`etcdwarden.snapshot.inspect.replay`); only the asked key is kept. The value is described without
any key material:

* ``encrypted``: a Kubernetes encryption-at-rest value (``k8s:enc:<provider>:<version>:<key name>:``),
  named by provider and key (its plaintext needs the EncryptionConfiguration: ``encryption get``);
* ``kubernetes-protobuf``: the ``k8s\\x00`` envelope (a ``runtime.Unknown``), with the apiVersion and kind
  of its TypeMeta and its content type;
* ``kubernetes-cbor``: a self-described CBOR object (``d9 d9 f7``);
* ``json``: a JSON document (pretty-printed by the CLI; apiVersion and kind when it has them);
* ``text`` (UTF-8) or ``binary``.

A missing key is :class:`~etcdwarden.errors.NotFound` (exit 1) that says whether the key was deleted or
never existed at that revision; a revision outside the snapshot's history is a usage error (exit 2).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.errors import NotFound
from etcdwarden.etcd.api.mvccpb import kv_pb2
from etcdwarden.snapshot.bbolt import BoltFile
from etcdwarden.snapshot.inspect import replay

K8S_PROTOBUF_MAGIC = b"k8s\x00"
CBOR_MAGIC = b"\xd9\xd9\xf7"
_ENCRYPTED = re.compile(rb"^k8s:enc:([A-Za-z0-9_-]+):(v[0-9]+):([^:]*):")


@dataclass
class ValueInfo:
    """What a stored value is (never its secret contents)."""

    kind: str  # encrypted, kubernetes-protobuf, kubernetes-cbor, json, text, binary
    size: int
    api_version: str | None = None
    object_kind: str | None = None
    content_type: str | None = None
    provider: str | None = None
    key_name: str | None = None
    document: Any = None  # the parsed JSON (kind json)

    def summary(self) -> str:
        if self.kind == "encrypted":
            return (f"encrypted at rest by {self.provider} ({self.provider}/{self.key_name}), {self.size} bytes; "
                    "decrypt it with `etcdwarden encryption get` and the EncryptionConfiguration")
        if self.kind == "kubernetes-protobuf":
            what = " ".join(x for x in (self.api_version, self.object_kind) if x) or "an object of unknown type"
            return f"Kubernetes object (protobuf): {what}, {self.size} bytes"
        if self.kind == "kubernetes-cbor":
            return f"Kubernetes object (CBOR), {self.size} bytes"
        if self.kind == "json":
            what = " ".join(x for x in (self.api_version, self.object_kind) if x)
            return f"JSON{': ' + what if what else ''}, {self.size} bytes"
        return f"{self.kind}, {self.size} bytes"

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "size": self.size}
        for name, v in (("api_version", self.api_version), ("object_kind", self.object_kind),
                        ("content_type", self.content_type), ("provider", self.provider),
                        ("key_name", self.key_name)):
            if v is not None:
                d[name] = v
        return d


@dataclass
class FoundKey:
    kv: kv_pb2.KeyValue
    revision: int  # the revision the key space was read at
    latest_revision: int
    compact_revision: int
    info: ValueInfo = field(init=False)

    def __post_init__(self) -> None:
        self.info = describe(self.kv.value)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> dict[int, bytes]:
    """The length-delimited fields of a protobuf message (last one wins); other wire types are skipped."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            out[number] = buf[pos:pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos > len(buf):
        raise ValueError("truncated message")
    return out


def _text(b: bytes | None) -> str | None:
    return b.decode("utf-8", "replace") if b else None


def describe(value: bytes) -> ValueInfo:
    """Classify a stored value (see the module docstring)."""
    size = len(value)
    m = _ENCRYPTED.match(value)
    if m:
        return ValueInfo("encrypted", size, provider=m.group(1).decode(),
                         key_name=m.group(3).decode("utf-8", "replace"))
    if value.startswith(K8S_PROTOBUF_MAGIC):
        info = ValueInfo("kubernetes-protobuf", size)
        try:
            unknown = _fields(value[len(K8S_PROTOBUF_MAGIC):])
            type_meta = _fields(unknown.get(1, b""))
        except ValueError:
            return info
        info.api_version, info.object_kind = _text(type_meta.get(1)), _text(type_meta.get(2))
        info.content_type = _text(unknown.get(4))
        return info
    if value.startswith(CBOR_MAGIC):
        return ValueInfo("kubernetes-cbor", size)
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return ValueInfo("binary", size)
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            doc = json.loads(text)
        except ValueError:
            pass
        else:
            info = ValueInfo("json", size, document=doc)
            if isinstance(doc, dict):
                av, k = doc.get("apiVersion"), doc.get("kind")
                info.api_version = av if isinstance(av, str) else None
                info.object_kind = k if isinstance(k, str) else None
            return info
    printable = all(c.isprintable() or c in "\t\r\n" for c in text)
    return ValueInfo("text" if printable else "binary", size)


def key_text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def get_key(path: str | os.PathLike[str], key: bytes, rev: int | None = None, name: str | None = None) -> FoundKey:
    """The key ``key`` of a plain bbolt file at ``rev`` (default: latest). ``name`` is the file as the user
    gave it, for messages. NotFound when the key does not exist at that revision."""
    deleted: list[int] = []  # revisions at which the key was deleted (up to ``rev``)

    def keep(kv: kv_pb2.KeyValue) -> kv_pb2.KeyValue | None:
        return kv if kv.key == key else None

    with BoltFile(path) as db:
        state, at, latest, compacted = replay(db, keep, key, rev, on_delete=lambda k, r: deleted.append(r)
                                              if k == key else None)
    kv = state.get(key)
    if kv is None:
        where = f"snapshot {name or path} at revision {at}"
        if deleted:
            before = deleted[-1] - 1
            raise NotFound(f"key {key_text(key)!r} was deleted at revision {deleted[-1]}: it is not in the {where}"
                           + (f"; --rev {before} shows it as it was before" if before >= max(compacted, 1) else ""))
        others = sum(1 for k, v in state.items() if v is None and k != key)
        hint = f"; {others} key(s) start with it: list them with `snapshot inspect --prefix`" if others else ""
        raise NotFound(f"key {key_text(key)!r} is not in the {where}{hint}")
    return FoundKey(kv, at, latest, compacted)
