"""A segment of continuous backup: the revisions that follow a full backup, in order, and its manifest.

A **chain** is one full backup (its ID ``<base>``) plus the segments captured after it::

    segment_<base>_<first-revision>.zst    the records, zstd-compressed JSON lines (this module's encoding)
    segment_<base>_<first-revision>.json   the segment's manifest (:class:`SegmentManifest`), written last

The first segment starts at the base backup's revision + 1; each next one at the previous one's last
revision + 1. Each manifest carries the sha256 of its own data file and the sha256 of the previous
segment's data file (for the first segment: the sha256 the base manifest records for its snapshot
file), so a chain is a hash chain anchored in its full backup: a missing, altered, reordered or
overlapping segment is found by :func:`check_chain` before anything is replayed.

Records, one JSON object per line (UTF-8, keys and values of etcd in base64)::

    {"rev": 124, "time": "2026-12-02T10:15:05.123456Z",
     "events": [{"type": "put", "key": "L2Zvbw==", "value": "YmFy", "create_revision": 120,
                 "mod_revision": 124, "version": 3, "lease": 0}, ...]}
    {"lease": {"op": "grant", "id": 7587..., "ttl": 60, "time": "..."}}
    {"lease": {"op": "revoke", "id": 7587..., "time": "..."}}

A revision record holds every event of that revision, in the order the watch delivered them (a Txn's
operations share one revision). ``time`` is the wall-clock time the receiver saw the revision: a
restore ``--to-time T`` keeps every revision seen at or before T. A delete event carries the key and
``mod_revision`` (the delete's revision); its other fields are 0. Lease records are what the receiver
observed of the lease table (grants, with the TTL granted; revocations and expiries), in observation
order between the revision records; they carry no revision of their own (a lease grant does not change
the revision; its revocation shows up as delete events of the keys attached to it).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import zstandard
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from etcdwarden.errors import EtcdwardenError
from etcdwarden.format.names import TS, BackupNames, Kind, parse

SEGMENT_FORMAT = 1
ZSTD_LEVEL = 3
MAX_LINE = 256 << 20  # one revision's record: etcd's request limit is 1.5 MiB by default, a Txn many of them

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]
Revision = Annotated[int, Field(ge=1)]


class SegmentError(EtcdwardenError):
    """A segment (data or manifest) that cannot be used; the message names the segment and the first problem."""


# -- records --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One event of a revision, as etcd's watch reports it (``mvccpb.Event``)."""

    type: Literal["put", "delete"]
    key: bytes
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True)
class RevisionRecord:
    """Every event of one revision, and when the receiver saw it."""

    revision: int
    time: dt.datetime
    events: tuple[Event, ...]


@dataclass(frozen=True)
class LeaseRecord:
    """A change of the lease table the receiver observed: ``grant`` (with the TTL granted) or ``revoke``."""

    op: Literal["grant", "revoke"]
    id: int
    time: dt.datetime
    ttl: int = 0


Record = RevisionRecord | LeaseRecord


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _time(t: dt.datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("segment times must be timezone-aware")
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_record(rec: Record) -> bytes:
    """One record as its line (ending in ``\\n``)."""
    doc: dict[str, Any]
    if isinstance(rec, RevisionRecord):
        doc = {"rev": rec.revision, "time": _time(rec.time), "events": [
            {"type": e.type, "key": _b64(e.key), "value": _b64(e.value), "create_revision": e.create_revision,
             "mod_revision": e.mod_revision, "version": e.version, "lease": e.lease} for e in rec.events]}
    else:
        lease: dict[str, Any] = {"op": rec.op, "id": rec.id, "time": _time(rec.time)}
        if rec.op == "grant":
            lease["ttl"] = rec.ttl
        doc = {"lease": lease}
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def _int(doc: dict[str, Any], key: str, minimum: int = 0) -> int:
    v = doc.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum or v >= 2**63:
        raise ValueError(f"{key}: {v!r} is not an integer >= {minimum}")
    return v


def _bytes(doc: dict[str, Any], key: str) -> bytes:
    v = doc.get(key)
    if not isinstance(v, str):
        raise ValueError(f"{key}: not a base64 string")
    try:
        return base64.b64decode(v, validate=True)
    except binascii.Error:
        raise ValueError(f"{key}: not valid base64") from None


def _parse_time(v: Any) -> dt.datetime:
    if not isinstance(v, str):
        raise ValueError("time: not a string")
    t = dt.datetime.fromisoformat(v)
    if t.tzinfo is None:
        raise ValueError("time: no time zone")
    try:
        return t.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00+00:05: no UTC time
        raise ValueError(f"time: {v} is out of range") from None


def decode_record(line: bytes) -> Record:
    """The record of one line; :class:`ValueError` naming the problem."""
    doc = json.loads(line)
    if not isinstance(doc, dict):
        raise ValueError("a record is not a JSON object")
    if "lease" in doc:
        lease = doc["lease"]
        if not isinstance(lease, dict) or lease.get("op") not in ("grant", "revoke"):
            raise ValueError("lease: not a grant or revoke record")
        return LeaseRecord(lease["op"], _int(lease, "id", 1), _parse_time(lease.get("time")),
                           _int(lease, "ttl") if lease["op"] == "grant" else 0)
    raw_events = doc.get("events")
    if not isinstance(raw_events, list) or not raw_events:
        raise ValueError("events: a revision record needs at least one event")
    rev = _int(doc, "rev", 1)
    events: list[Event] = []
    for e in raw_events:
        if not isinstance(e, dict) or e.get("type") not in ("put", "delete"):
            raise ValueError("events: an event is not a put or delete")
        ev = Event(e["type"], _bytes(e, "key"), _bytes(e, "value"), _int(e, "create_revision"),
                   _int(e, "mod_revision"), _int(e, "version"), _int(e, "lease"))
        if ev.mod_revision != rev:
            raise ValueError(f"events: an event of revision {ev.mod_revision} in the record of revision {rev}")
        events.append(ev)
    return RevisionRecord(rev, _parse_time(doc.get("time")), tuple(events))


# -- the data file ----------------------------------------------------------------------------------------


@dataclass
class SegmentEncoder:
    """Encode records into a segment's compressed bytes, incrementally (bytes out as they are produced).

    Checks the order as it goes: revisions strictly increasing and consecutive from ``first_revision``
    (a revision with no event does not exist in etcd, so there are no holes), times not going back.
    """

    first_revision: int
    _cctx: Any = field(default=None, repr=False)
    sha: Any = field(default_factory=hashlib.sha256, repr=False)
    size: int = 0
    last_revision: int = 0
    revisions: int = 0
    events: int = 0
    lease_records: int = 0
    first_time: dt.datetime | None = None
    last_time: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.first_revision < 1:
            raise ValueError("a segment starts at revision 1 or later")
        self._cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        self.last_revision = self.first_revision - 1

    def _out(self, data: bytes) -> bytes:
        self.sha.update(data)
        self.size += len(data)
        return data

    def add(self, rec: Record) -> bytes:
        """Encode ``rec``; returns compressed bytes ready to write (often empty: zstd buffers)."""
        if isinstance(rec, RevisionRecord):
            if rec.revision != self.last_revision + 1:
                raise SegmentError(f"revision {rec.revision} follows {self.last_revision}: a segment holds every "
                                   "revision in order")
            if self.last_time is not None and rec.time < self.last_time:
                rec = RevisionRecord(rec.revision, self.last_time, rec.events)  # clock stepped back: keep order
            self.last_revision = rec.revision
            self.revisions += 1
            self.events += len(rec.events)
            self.first_time = self.first_time or rec.time
            self.last_time = rec.time
        else:
            self.lease_records += 1
        return self._out(self._cctx.compress(encode_record(rec)))

    def finish(self) -> bytes:
        """The last compressed bytes (the zstd frame's end)."""
        return self._out(self._cctx.flush())

    @property
    def sha256(self) -> str:
        return str(self.sha.hexdigest())


def decode_segment(data: bytes | Iterable[bytes], name: str = "segment") -> Iterator[Record]:
    """The records of a segment's compressed bytes (check its sha256 first: :func:`verify_data`)."""
    chunks: Iterable[bytes] = [data] if isinstance(data, bytes | bytearray) else data
    dctx = zstandard.ZstdDecompressor().decompressobj()
    pending = b""
    line_no = 0
    try:
        for chunk in chunks:
            pending += dctx.decompress(chunk)
            *lines, pending = pending.split(b"\n")
            if len(pending) > MAX_LINE:
                raise SegmentError(f"{name}: a record longer than {MAX_LINE} bytes")
            for line in lines:
                line_no += 1
                yield decode_record(line)
    except zstandard.ZstdError as e:
        raise SegmentError(f"{name}: not a valid zstd stream: {e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SegmentError(f"{name}: record {line_no}: {e}") from None
    if pending or not dctx.eof:
        raise SegmentError(f"{name}: the data ends in the middle of a record (truncated?)")


def verify_data(data: bytes, manifest: SegmentManifest) -> None:
    """Raise :class:`SegmentError` unless ``data`` is the file ``manifest`` describes (size and sha256)."""
    if len(data) != manifest.size:
        raise SegmentError(f"{manifest.file}: {len(data)} bytes but its manifest records {manifest.size}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise SegmentError(f"{manifest.file}: sha256 {digest} but its manifest records {manifest.sha256}")


# -- the manifest ------------------------------------------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)


class Receiver(_Part):
    """Who captured the segment (for the operator; not used to decide anything)."""

    host: str
    pid: int
    version: str


class SegmentManifest(_Part):
    """``segment_<base>_<first>.json``: what the data file holds and where it sits in its chain."""

    format: Literal[1] = 1  # SEGMENT_FORMAT
    kind: Literal["segment"] = "segment"
    base: Annotated[str, StringConstraints(pattern=rf"^{TS}$")]  # the full backup the chain starts from
    cluster_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{1,16}$")]
    file: str
    first_revision: Revision
    last_revision: Revision
    revisions: Count  # revision records (= last - first + 1)
    events: Count
    lease_records: Count = 0
    first_time: Annotated[AwareDatetime, Field(strict=False)]
    last_time: Annotated[AwareDatetime, Field(strict=False)]
    size: Count
    sha256: Sha256
    previous_sha256: Sha256  # the previous segment's sha256, or the base snapshot file's for the first one
    created_at: Annotated[AwareDatetime, Field(strict=False)]
    receiver: Receiver | None = None
    # set on the last segment of a chain that cannot go on (e.g. "compacted": the watch's next revision was
    # compacted away before it was captured); a new full backup starts a new chain
    closes_chain: str | None = None

    @property
    def name(self) -> str:
        return BackupNames(self.base).segment_manifest(self.first_revision)


def segment_problem(m: SegmentManifest, expected_name: str | None = None) -> str | None:
    """The first problem with a segment manifest's content, or ``None`` (on read and on write)."""
    n = parse(m.file)
    if n is None or n.temp or n.kind is not Kind.SEGMENT:
        return f"file: {m.file!r} is not the name of a segment"
    if n.id != m.base or n.revision != m.first_revision:
        return f"file: {m.file} is not the segment of base {m.base} starting at revision {m.first_revision}"
    if expected_name is not None and m.name != expected_name:
        return f"the manifest describes {m.name}, not {expected_name}"
    if m.last_revision < m.first_revision:
        return f"last_revision {m.last_revision} is before first_revision {m.first_revision}"
    if m.revisions != m.last_revision - m.first_revision + 1:
        return f"revisions: {m.revisions}, but {m.first_revision}..{m.last_revision} is " \
               f"{m.last_revision - m.first_revision + 1}"
    if m.events < m.revisions:
        return f"events: {m.events}, fewer than its {m.revisions} revisions"
    if m.last_time < m.first_time:
        return "last_time is before first_time"
    return None


def load_segment_manifest(raw: bytes | str, expected_name: str | None = None) -> SegmentManifest:
    """Parse and validate a segment manifest; :class:`SegmentError` naming the first problem."""
    where = expected_name or "segment manifest"
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise SegmentError(f"{where}: not valid JSON: {e}") from None
    if isinstance(doc, dict) and isinstance(doc.get("format"), int) and doc["format"] > SEGMENT_FORMAT:
        raise SegmentError(f"{where}: segment format {doc['format']}, written by a newer etcdwarden; upgrade")
    try:
        m = SegmentManifest.model_validate(doc)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"]) or "the manifest"
        raise SegmentError(f"{where}: {loc}: {err['msg']}") from None
    found = segment_problem(m, expected_name)
    if found is not None:
        raise SegmentError(f"{where}: {found}")
    return m


def dump_segment_manifest(m: SegmentManifest) -> bytes:
    found = segment_problem(m)
    if found is not None:
        raise SegmentError(f"{m.name}: {found}")
    return (json.dumps(m.model_dump(mode="json", by_alias=True), indent=2) + "\n").encode()


# -- chains -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainBreak:
    """Where a chain stops being usable: replay may go up to ``last_good_revision`` and no further."""

    at: str  # the segment manifest name (or the expected one, for a gap)
    problem: str
    last_good_revision: int


@dataclass(frozen=True)
class Chain:
    """One full backup and the segments that follow it, as far as they link (see :func:`check_chain`)."""

    base: str
    base_revision: int
    segments: tuple[SegmentManifest, ...]  # the linked ones, in order
    broken: ChainBreak | None = None
    closed: str | None = None  # why the chain ends (closes_chain of its last segment)

    @property
    def last_revision(self) -> int:
        return self.segments[-1].last_revision if self.segments else self.base_revision

    @property
    def last_time(self) -> dt.datetime | None:
        return self.segments[-1].last_time if self.segments else None


def check_chain(base: str, base_revision: int, base_snapshot_sha256: str,
                segments: Sequence[SegmentManifest]) -> Chain:
    """Link ``segments`` (any order) to the base backup: consecutive revisions, each ``previous_sha256``
    the one before it. Stops at the first gap, overlap or broken link; the rest is unusable."""
    linked: list[SegmentManifest] = []
    expected_first, previous = base_revision + 1, base_snapshot_sha256
    by_first = sorted(segments, key=lambda s: s.first_revision)
    for s in by_first:
        if s.base != base:
            raise ValueError(f"{s.name} belongs to base {s.base}, not {base}")
        if s.first_revision != expected_first:
            what = "overlaps" if s.first_revision < expected_first else "leaves a gap before"
            return Chain(base, base_revision, tuple(linked), ChainBreak(
                s.name, f"{what} revision {expected_first} (it starts at {s.first_revision})", expected_first - 1))
        if s.previous_sha256 != previous:
            return Chain(base, base_revision, tuple(linked), ChainBreak(
                s.name, "its previous_sha256 does not match the segment (or base snapshot) before it",
                expected_first - 1))
        linked.append(s)
        if s.closes_chain is not None:
            if s is not by_first[-1]:
                nxt = by_first[by_first.index(s) + 1]
                return Chain(base, base_revision, tuple(linked),
                             ChainBreak(nxt.name, f"the chain was closed ({s.closes_chain}) before it",
                                        s.last_revision), closed=s.closes_chain)
            return Chain(base, base_revision, tuple(linked), closed=s.closes_chain)
        expected_first, previous = s.last_revision + 1, s.sha256
    return Chain(base, base_revision, tuple(linked))


__all__ = ["SEGMENT_FORMAT", "Chain", "ChainBreak", "Event", "LeaseRecord", "Receiver", "Record", "RevisionRecord",
           "SegmentEncoder", "SegmentError", "SegmentManifest", "check_chain", "decode_record", "decode_segment",
           "dump_segment_manifest", "encode_record", "load_segment_manifest", "segment_problem", "verify_data"]
