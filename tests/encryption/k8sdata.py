"""Kubernetes-shaped values for the tests: protobuf (``k8s\\0`` + runtime.Unknown) and JSON objects."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.api.mvccpb.kv_pb2 import KeyValue
from etcdwarden.etcd.client import EtcdClient


def _ld(num: int, data: bytes) -> bytes:
    n = len(data)
    out = bytearray([num << 3 | 2])
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out) + data


def protobuf_object(api_version: str, kind: str, ns: str, name: str, data: dict[str, bytes]) -> bytes:
    """``k8s\\0`` + Unknown{typeMeta{apiVersion, kind}, raw=<object{metadata{name, ns}, data map}>}."""
    meta = _ld(1, name.encode()) + _ld(3, ns.encode())
    body = _ld(1, meta) + b"".join(_ld(2, _ld(1, k.encode()) + _ld(2, v)) for k, v in sorted(data.items()))
    unknown = _ld(1, _ld(1, api_version.encode()) + _ld(2, kind.encode())) + _ld(2, body)
    return b"k8s\x00" + unknown + _ld(3, b"") + _ld(4, b"")


def json_object(api_version: str, kind: str, ns: str, name: str, data: dict[str, str]) -> bytes:
    obj = {"kind": kind, "apiVersion": api_version, "metadata": {"name": name, "namespace": ns}, "data": data}
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


@dataclass
class Seeded:
    values: dict[bytes, bytes] = field(default_factory=dict)  # every key written → original value
    selected: set[bytes] = field(default_factory=set)  # keys under the selected resources
    leased: dict[bytes, int] = field(default_factory=dict)  # token key → lease id


OTHER = [b"/registry/pods/default/p1", b"/registry/secretsfoo/x", b"/registry/masterleases/10.0.0.1",
         b"/kubernetes.io/pods/ns/p", b"/openshift.io/builds/ns/b", b"compact_rev_key"]


async def seed(client: EtcdClient, n: int = 5, lease_ttl: int = 600, pad: int = 0) -> Seeded:
    """``n`` objects per resource under both layouts, plus OAuth tokens on a lease and unrelated keys."""
    s = Seeded()
    lease = await client.lease_grant(lease_ttl)
    filler = b"x" * pad

    async def put(key: bytes, value: bytes, selected: bool = True, lease_id: int = 0) -> None:
        await client.put(key, value, lease=lease_id)
        s.values[key] = value
        if selected:
            s.selected.add(key)
        if lease_id:
            s.leased[key] = lease_id

    for root, os_root in ((b"/registry/", b"/registry/"), (b"/kubernetes.io/", b"/openshift.io/")):
        for i in range(n):
            ns = f"ns{i % 3}"
            await put(root + f"secrets/{ns}/s{i}".encode(),
                      protobuf_object("v1", "Secret", ns, f"s{i}", {"password": f"hunter{i}".encode() + filler}))
            await put(root + f"configmaps/{ns}/c{i}".encode(),
                      json_object("v1", "ConfigMap", ns, f"c{i}", {"k": f"v{i}" + filler.decode()}))
            await put(os_root + f"routes/{ns}/r{i}".encode(),
                      json_object("route.openshift.io/v1", "Route", ns, f"r{i}", {}))
            await put(os_root + f"oauth/accesstokens/sha256~t{i}".encode(),
                      protobuf_object("oauth.openshift.io/v1", "OAuthAccessToken", "", f"t{i}", {}), lease_id=lease)
            await put(os_root + f"oauth/authorizetokens/sha256~a{i}".encode(),
                      protobuf_object("oauth.openshift.io/v1", "OAuthAuthorizeToken", "", f"a{i}", {}),
                      lease_id=lease)
    for k in OTHER:
        await put(k, b"k8s\x00other-" + k, selected=False)
    return s


async def snapshot(client: EtcdClient) -> dict[bytes, KeyValue]:
    resp = await client.range(pb.RangeRequest(key=b"\x00", range_end=b"\x00"))
    return {kv.key: kv for kv in resp.kvs}
