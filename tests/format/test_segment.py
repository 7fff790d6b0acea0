"""The segment format of continuous backup: records, the data file, the manifest and chain checks."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdwarden.format.names import BackupNames
from etcdwarden.format.segment import (
    Event,
    LeaseRecord,
    Record,
    RevisionRecord,
    SegmentEncoder,
    SegmentError,
    SegmentManifest,
    check_chain,
    decode_segment,
    dump_segment_manifest,
    load_segment_manifest,
    verify_data,
)

pytestmark = pytest.mark.unit

BASE = "2026-12-02_101500"
T0 = dt.datetime(2026, 12, 2, 10, 15, 5, 123456, tzinfo=dt.UTC)
SNAP_SHA = hashlib.sha256(b"snapshot").hexdigest()


def _rev(r: int, n: int = 1, t: dt.datetime = T0) -> RevisionRecord:
    return RevisionRecord(r, t, tuple(Event("put", f"/k/{r}/{i}".encode(), b"v" * i, r, r, 1, 0) for i in range(n)))


def _segment(first: int, last: int, previous: str, closes: str | None = None) -> tuple[bytes, SegmentManifest]:
    enc = SegmentEncoder(first)
    data = b"".join(enc.add(_rev(r, t=T0 + dt.timedelta(seconds=r))) for r in range(first, last + 1)) + enc.finish()
    assert enc.first_time is not None and enc.last_time is not None
    m = SegmentManifest(base=BASE, cluster_id="abc", file=BackupNames(BASE).segment(first), first_revision=first,
                        last_revision=last, revisions=enc.revisions, events=enc.events, first_time=enc.first_time,
                        last_time=enc.last_time, size=enc.size, sha256=enc.sha256, previous_sha256=previous,
                        created_at=T0, closes_chain=closes)
    return data, m


def test_round_trip_records_and_manifest() -> None:
    enc = SegmentEncoder(101)
    recs: list[Record] = [_rev(101, 3), LeaseRecord("grant", 7, T0, ttl=60),
            RevisionRecord(102, T0, (Event("delete", b"/k/101/0", mod_revision=102),
                                     Event("put", b"\x00\xff", b"\x01", 102, 102, 1, 7))),
            LeaseRecord("revoke", 7, T0)]
    data = b"".join(enc.add(r) for r in recs) + enc.finish()
    assert list(decode_segment(data)) == recs
    assert list(decode_segment([data[:5], data[5:17], data[17:]])) == recs  # streamed in any chunks
    assert (enc.revisions, enc.events, enc.lease_records, enc.last_revision) == (2, 5, 2, 102)
    assert enc.size == len(data) and enc.sha256 == hashlib.sha256(data).hexdigest()
    _, m = _segment(101, 105, SNAP_SHA)
    raw = dump_segment_manifest(m)
    assert load_segment_manifest(raw, m.name) == m
    assert m.name == f"segment_{BASE}_{101:019d}.json"


def test_order_is_enforced_while_encoding() -> None:
    enc = SegmentEncoder(10)
    enc.add(_rev(10))
    with pytest.raises(SegmentError, match="follows 10"):
        enc.add(_rev(12))
    with pytest.raises(SegmentError, match="follows 10"):
        enc.add(_rev(10))
    enc.add(_rev(11, t=T0 - dt.timedelta(seconds=5)))  # a clock step back keeps the order of times
    assert enc.last_time == T0


def test_damaged_data_is_refused() -> None:
    data, m = _segment(1, 20, SNAP_SHA)
    verify_data(data, m)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    with pytest.raises(SegmentError, match="sha256"):
        verify_data(bytes(flipped), m)
    with pytest.raises(SegmentError, match="bytes but"):
        verify_data(data[:-1], m)
    with pytest.raises(SegmentError, match=r"truncated|zstd"):
        list(decode_segment(data[:-3]))


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+00:05", "9999-12-31T23:59:59-01:00"])
def test_a_record_time_with_no_utc_equivalent_is_a_bad_record(when: str) -> None:
    """A ValueError naming the record (decode_segment turns it into a SegmentError), not an OverflowError."""
    from etcdwarden.format.segment import decode_record

    with pytest.raises(ValueError, match="out of range"):
        decode_record(b'{"lease": {"op": "revoke", "id": 1, "time": "%s"}}' % when.encode())


@pytest.mark.parametrize("doc, problem", [
    (b"[]", r"model_type|valid dictionary"),
    (b"{", "not valid JSON"),
    (b'{"format": 9}', "newer etcdwarden"),
])
def test_bad_manifests(doc: bytes, problem: str) -> None:
    with pytest.raises(SegmentError, match=problem):
        load_segment_manifest(doc)


def test_inconsistent_manifest_is_refused() -> None:
    _, m = _segment(5, 9, SNAP_SHA)
    bad = m.model_copy(update={"revisions": 4})
    with pytest.raises(SegmentError, match="revisions"):
        dump_segment_manifest(bad)
    wrong_file = m.model_copy(update={"file": BackupNames(BASE).segment(6)})
    with pytest.raises(SegmentError, match="starting at revision 5"):
        load_segment_manifest(dump_segment_manifest(m).replace(m.file.encode(), wrong_file.file.encode()))


def test_chain_links_and_breaks() -> None:
    d1, s1 = _segment(101, 110, SNAP_SHA)
    d2, s2 = _segment(111, 120, s1.sha256)
    _, s3 = _segment(121, 130, s2.sha256)
    chain = check_chain(BASE, 100, SNAP_SHA, [s3, s1, s2])
    assert chain.broken is None and chain.last_revision == 130 and len(chain.segments) == 3
    gap = check_chain(BASE, 100, SNAP_SHA, [s1, s3])
    assert gap.broken is not None and gap.last_revision == 110 and gap.broken.last_good_revision == 110
    assert "gap" in gap.broken.problem
    _, overlap = _segment(105, 125, s1.sha256)
    o = check_chain(BASE, 100, SNAP_SHA, [s1, overlap])
    assert o.broken is not None and "overlaps" in o.broken.problem
    tampered = s2.model_copy(update={"previous_sha256": "0" * 64})
    t = check_chain(BASE, 100, SNAP_SHA, [s1, tampered, s3])
    assert t.broken is not None and t.broken.at == s2.name and t.last_revision == 110
    unanchored = check_chain(BASE, 100, "f" * 64, [s1, s2])
    assert unanchored.broken is not None and unanchored.segments == ()
    _, closing = _segment(111, 115, s1.sha256, closes="compacted")
    c = check_chain(BASE, 100, SNAP_SHA, [s1, closing])
    assert c.closed == "compacted" and c.broken is None and c.last_revision == 115
    assert d1 and d2


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.tuples(st.booleans(), st.binary(max_size=40), st.binary(max_size=200),
                                   st.integers(0, 2**62)), min_size=1, max_size=4), min_size=1, max_size=20),
       st.integers(1, 2**40))
def test_any_records_round_trip(revs: list[list[tuple[bool, bytes, bytes, int]]], first: int) -> None:
    recs = [RevisionRecord(first + i, T0, tuple(
        Event("delete" if d else "put", k, b"" if d else v, 0 if d else first + i, first + i, 0 if d else 1,
              0 if d else lease) for d, k, v, lease in evs)) for i, evs in enumerate(revs)]
    enc = SegmentEncoder(first)
    data = b"".join(enc.add(r) for r in recs) + enc.finish()
    assert list(decode_segment(data)) == recs
