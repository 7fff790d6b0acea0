"""``snapshot get FILE KEY`` (issue 11 item 15): one key of a real snapshot, checked against real etcdctl."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.snapshot.get import describe
from tests.cli_helpers import cli
from tests.conftest import etcdctl
from tests.snapshot import save, start_cluster
from tests.tiers import starts

CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "default"},
             "data": {"greeting": "hello"}}


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (the sizes here stay below 128)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def k8s_protobuf(api_version: str, kind: str, raw: bytes) -> bytes:
    """kube-apiserver's storage encoding: ``k8s\\x00`` + runtime.Unknown{typeMeta, raw, contentType}."""
    type_meta = _field(1, api_version.encode()) + _field(2, kind.encode())
    return b"k8s\x00" + _field(1, type_meta) + _field(2, raw) + _field(4, b"application/vnd.kubernetes.protobuf")


SECRET = k8s_protobuf("v1", "Secret", b"\x0a\x06\x0a\x02db\x12\x00" + bytes(range(40)))
ENCRYPTED = b"k8s:enc:aescbc:v1:key1:" + bytes(range(200, 256)) * 2
DEPLOYMENT = k8s_protobuf("apps/v1", "Deployment", b"\x01\x02")


@dataclass
class Snap:
    path: Path
    old_rev: int  # the configmap's key as of this revision held the first version
    compact_rev: int
    deleted_at: int


def _put(cluster: object, items: list[tuple[bytes, bytes]]) -> None:
    async def go() -> None:
        async with EtcdClient(ClientConfig.from_strings(cluster.endpoints)) as c:  # type: ignore[attr-defined]
            for k, v in items:
                await c.put(k, v)

    asyncio.run(go())


def _rev(cluster: object) -> int:
    out = json.loads(etcdctl(cluster, "get", "/", "-w", "json"))  # type: ignore[arg-type]
    return int(out["header"]["revision"])


@pytest.fixture(scope="module")
@starts("etcd")
def snap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snap]:
    base = tmp_path_factory.mktemp("get")
    cluster = start_cluster(base / "cluster")
    try:
        etcdctl(cluster, "put", "/filler", "x")
        compact_rev = _rev(cluster)
        etcdctl(cluster, "compact", str(compact_rev))
        first = dict(CONFIGMAP, data={"greeting": "hi"})
        etcdctl(cluster, "put", "/registry/configmaps/default/cm", json.dumps(first))
        old_rev = _rev(cluster)
        etcdctl(cluster, "put", "/registry/configmaps/default/cm", json.dumps(CONFIGMAP))
        _put(cluster, [(b"/registry/secrets/default/db", SECRET), (b"/registry/secrets/default/enc", ENCRYPTED),
                       (b"/registry/deployments/default/web", DEPLOYMENT), (b"/bin", b"\xff\x00\xfe")])
        etcdctl(cluster, "put", "/plain", "just text")
        etcdctl(cluster, "put", "/gone", "soon deleted")
        etcdctl(cluster, "del", "/gone")
        deleted_at = _rev(cluster)
        path = save(cluster, base / "snap.db")
        yield Snap(path, old_rev, compact_rev, deleted_at)
    finally:
        cluster.stop()


def test_json_value_is_pretty_printed_and_matches_etcdctl(snap: Snap) -> None:
    r = cli("snapshot", "get", str(snap.path), "/registry/configmaps/default/cm")
    assert r.code == 0, r.err
    assert "value:           JSON: v1 ConfigMap" in r.out
    assert json.dumps(CONFIGMAP, indent=2) in r.out
    doc = json.loads(cli("-w", "json", "snapshot", "get", str(snap.path), "/registry/configmaps/default/cm").out)
    assert doc["document"] == CONFIGMAP and doc["value_info"]["object_kind"] == "ConfigMap"
    assert base64.b64decode(doc["value"]) == json.dumps(CONFIGMAP).encode()
    assert doc["version"] == 2 and doc["mod_revision"] == snap.old_rev + 1


def test_older_revision(snap: Snap) -> None:
    r = cli("-w", "json", "snapshot", "get", str(snap.path), "/registry/configmaps/default/cm", "--rev",
            str(snap.old_rev))
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["document"]["data"] == {"greeting": "hi"} and doc["header"]["revision"] == snap.old_rev


def test_global_key_flag_does_not_replace_the_key_looked_up(snap: Snap) -> None:
    # KEY and etcdctl's global --key (the client's TLS key file) once shared one argparse destination
    r = cli("-w", "json", "snapshot", "get", str(snap.path), "/registry/configmaps/default/cm",
            "--key", "/etc/etcd/client.key")
    assert r.code == 0, r.err
    assert json.loads(r.out)["document"] == CONFIGMAP


def test_kubernetes_protobuf_is_named_and_written_byte_exact(snap: Snap, tmp_path: Path) -> None:
    r = cli("snapshot", "get", str(snap.path), "/registry/secrets/default/db")
    assert r.code == 0, r.err
    assert "Kubernetes object (protobuf): v1 Secret" in r.out and "-o FILE" in r.err
    out = tmp_path / "secret.bin"
    r = cli("snapshot", "get", str(snap.path), "/registry/secrets/default/db", "-o", str(out))
    assert r.code == 0, r.err
    assert out.read_bytes() == SECRET and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name != "secret.bin"]  # no temporary file left
    # never overwritten
    r = cli("snapshot", "get", str(snap.path), "/registry/deployments/default/web", "-o", str(out))
    assert r.code == 2 and "exists" in r.err and out.read_bytes() == SECRET
    r = cli("snapshot", "get", str(snap.path), "/registry/deployments/default/web")
    assert "Kubernetes object (protobuf): apps/v1 Deployment" in r.out


def test_encrypted_value_is_named_by_provider_and_key(snap: Snap) -> None:
    r = cli("snapshot", "get", str(snap.path), "/registry/secrets/default/enc")
    assert r.code == 0, r.err
    assert "encrypted at rest by aescbc (aescbc/key1)" in r.out
    doc = json.loads(cli("-w", "json", "snapshot", "get", str(snap.path), "/registry/secrets/default/enc").out)
    assert doc["value_info"] == {"kind": "encrypted", "size": len(ENCRYPTED), "provider": "aescbc", "key_name": "key1"}


def test_text_and_binary(snap: Snap, tmp_path: Path) -> None:
    r = cli("snapshot", "get", str(snap.path), "/plain")
    assert r.code == 0 and "just text" in r.out
    r = cli("snapshot", "get", str(snap.path), "/bin", "-o", str(tmp_path / "b"))
    assert r.code == 0 and (tmp_path / "b").read_bytes() == b"\xff\x00\xfe"


def test_missing_deleted_and_compacted(snap: Snap) -> None:
    r = cli("snapshot", "get", str(snap.path), "/no/such/key")
    assert r.code == 1 and "key '/no/such/key' is not in the snapshot" in r.err and "Traceback" not in r.err
    r = cli("snapshot", "get", str(snap.path), "/registry/secrets")
    assert r.code == 1 and "2 key(s) start with it" in r.err
    r = cli("snapshot", "get", str(snap.path), "/gone")
    assert r.code == 1 and f"was deleted at revision {snap.deleted_at}" in r.err
    assert f"--rev {snap.deleted_at - 1} shows it" in r.err
    assert cli("snapshot", "get", str(snap.path), "/gone", "--rev", str(snap.deleted_at - 1)).code == 0
    r = cli("snapshot", "get", str(snap.path), "/filler", "--rev", str(snap.compact_rev - 1))
    assert r.code == 2 and "has been compacted: it is older than the snapshot's compaction at revision " \
        f"{snap.compact_rev}" in r.err
    assert cli("snapshot", "get", str(snap.path), "/filler", "--rev", "0").code == 2


@pytest.mark.unit
@pytest.mark.parametrize(("value", "kind"), [
    (b"", "text"), (b"{", "text"), (b"[1, 2]", "json"), (b"k8s\x00\xff\xff", "kubernetes-protobuf"),
    (b"\xd9\xd9\xf7\xa1", "kubernetes-cbor"), (b"k8s:enc:kms:v2:1_secrets:\x00\x01", "encrypted"),
    (b"\x1b[31mred", "binary"),
])
def test_describe(value: bytes, kind: str) -> None:
    assert describe(value).kind == kind
