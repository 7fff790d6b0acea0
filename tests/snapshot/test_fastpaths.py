"""Fast paths of the snapshot readers agree with the slow, obvious ones: the in-place reader of large
``KeyValue`` values with the protobuf parser, the directly loaded CRC-32C with its definition."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdwarden.etcd.api.mvccpb import kv_pb2
from etcdwarden.snapshot.kvcheck import _large_keyvalue

pytestmark = pytest.mark.unit

int64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    kv = kv_pb2.KeyValue(key=draw(st.binary(max_size=40)), create_revision=draw(int64),
                         mod_revision=draw(int64), version=draw(int64), value=draw(st.binary(max_size=300)),
                         lease=draw(int64))
    data = bytearray(kv.SerializeToString())
    for _ in range(draw(st.integers(0, 3))):  # damage: flipped, cut or inserted bytes
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)):]
        elif op == "insert":
            data[draw(st.integers(0, len(data))):0] = draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(messages())
def test_agrees_with_protobuf(data: bytes) -> None:
    fast = _large_keyvalue(data, 0, len(data))
    if fast is None:
        return  # left to the full parser
    kv = kv_pb2.KeyValue()
    try:
        kv.ParseFromString(data)
    except DecodeError:
        pytest.fail(f"accepted {data!r}, which protobuf refuses")
    assert fast == (kv.key, kv.create_revision, kv.mod_revision, kv.version)


def test_reads_in_place_at_an_offset() -> None:
    kv = kv_pb2.KeyValue(key=b"/registry/a", create_revision=3, mod_revision=9, version=2, value=b"v" * 70000)
    data = b"xx" + kv.SerializeToString() + b"yy"
    assert _large_keyvalue(memoryview(data), 2, len(data) - 2) == (b"/registry/a", 3, 9, 2)
    assert _large_keyvalue(data, 2, len(data) - 3) is None  # one byte short: the value overruns the message


def test_crc32c_check_value() -> None:
    from etcdwarden.snapshot.crc import crc32c

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    assert crc32c(b"56789", value=crc32c(b"1234")) == 0xE3069283
