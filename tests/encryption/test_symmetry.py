"""Issue 11 item 13: what ``enable`` encrypts, ``disable`` decrypts — on a keyspace that mixes Kubernetes
objects with values that are not.

AES-CBC is unauthenticated, so etcdwarden trusts an aescbc decryption only when it yields a Kubernetes
object. A value that is not one is refused *before anything is written* (exit 3, listed,
``--force=non-kubernetes``) on the way in and on the way back; authenticated providers need no flag.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.encryption.plaintext import looks_like_kubernetes_object
from etcdwarden.encryption.providers import classify
from etcdwarden.encryption.resources import select
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from tests.cli_helpers import cli
from tests.encryption.k8sdata import seed, snapshot

NON_K8S = {
    b"/registry/secrets/default/raw": b"hello, etcd",  # plain text
    b"/registry/configmaps/default/empty": b"",  # an empty value
    b"/kubernetes.io/secrets/ns/binary": bytes(range(256)),  # binary
    b"/registry/configmaps/default/brace": b"{not json",  # starts like JSON, is not
    b"/openshift.io/routes/ns/list": b"[1, 2]",  # JSON, but not an object
}
ALL = select()
FORCE = "--force=non-kubernetes"


def _prepare(etcd: LocalCluster) -> tuple[dict[bytes, bytes], set[bytes]]:
    async def go() -> tuple[dict[bytes, bytes], set[bytes]]:
        async with EtcdClient(ClientConfig.from_strings(etcd.endpoints)) as c:
            s = await seed(c, n=3)
            for k, v in NON_K8S.items():
                await c.put(k, v)
            return {**s.values, **NON_K8S}, s.selected | set(NON_K8S)

    return asyncio.run(go())


def _etcd(etcd: LocalCluster) -> dict[bytes, tuple[bytes, int]]:
    async def go() -> dict[bytes, tuple[bytes, int]]:
        async with EtcdClient(ClientConfig.from_strings(etcd.endpoints)) as c:
            return {k: (kv.value, kv.mod_revision) for k, kv in (await snapshot(c)).items()}

    return asyncio.run(go())


def _files(d: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


def _check_stored(etcd: LocalCluster, cfg: Path, originals: dict[bytes, bytes], selected: set[bytes],
                  label: str) -> None:
    conf = EncryptionConfiguration.load(cfg)
    for k, (value, _rev) in _etcd(etcd).items():
        if k not in selected:
            assert value == originals[k]
            continue
        assert classify(value).label == label, k
        r = next(r for r in ALL if r.owns(k))
        assert conf.transformer_for(r.name).read(value, k).plaintext == originals[k]


def _refused_unchanged(etcd: LocalCluster, d: Path, *argv: str) -> str:
    files, stored = _files(d), _etcd(etcd)
    r = cli(*argv)
    assert r.code == 3, (r.code, r.err)
    assert FORCE in r.err and "not Kubernetes objects" in r.err
    for k in NON_K8S:
        assert k.decode() in r.err  # every such value is listed
    assert _files(d) == files and _etcd(etcd) == stored  # refused before anything was written
    return r.err


@pytest.mark.unit
def test_looks_like_kubernetes_object() -> None:
    assert looks_like_kubernetes_object(b"k8s\x00\n\x0c")
    assert looks_like_kubernetes_object(b'{"kind":"ConfigMap"}\n')
    assert looks_like_kubernetes_object(b"\xd9\xd9\xf7\xa1")
    for v in NON_K8S.values():
        assert not looks_like_kubernetes_object(v)
    assert not looks_like_kubernetes_object(b"{" * 100_000)  # deep nesting is no crash


def test_aescbc_cycle_refuses_non_kubernetes_values_before_writing_and_is_symmetric(
        etcd1: LocalCluster, tmp_path: Path) -> None:
    d = tmp_path / "conf"
    d.mkdir()
    cfg = d / "enc.yaml"
    originals, selected = _prepare(etcd1)
    common = ["--endpoints", ",".join(etcd1.endpoints), "--config", str(cfg)]

    # enable: the values are listed and nothing at all is written (no configuration, no state)
    err = _refused_unchanged(etcd1, d, "encryption", "enable", *common)
    assert "aesgcm or secretbox" in err
    assert list(d.iterdir()) == []
    _refused_unchanged(etcd1, d, "encryption", "enable", *common, "--dry-run")

    r = cli("encryption", "enable", *common, FORCE)
    assert r.code == 0, r.err
    _check_stored(etcd1, cfg, originals, selected, "aescbc/key1")
    r = cli("-w", "json", "encryption", "status", *common)
    assert r.code == 0, r.err
    assert json.loads(r.out)["conditions"][0]["reason"] == "EncryptionCompleted"

    # rotate: read back from aescbc and written again with it: the same refusal, then the same flag
    err = _refused_unchanged(etcd1, d, "encryption", "rotate", *common)
    assert "enable --force=non-kubernetes" in err
    r = cli("encryption", "rotate", *common, FORCE)
    assert r.code == 0, r.err
    assert [k.name for k in EncryptionConfiguration.load(cfg).resources[0].providers[0].keys] == ["key2", "key1"]
    _check_stored(etcd1, cfg, originals, selected, "aescbc/key2")

    # disable: never half-migrated — refused before the first phase, then every value decrypted
    _refused_unchanged(etcd1, d, "encryption", "disable", *common)
    r = cli("encryption", "disable", *common, FORCE)
    assert r.code == 0, r.err
    assert {k: v for k, (v, _rev) in _etcd(etcd1).items()} == originals  # byte-identical again
    r = cli("encryption", "status", *common)
    assert r.code == 0 and "reason=DecryptionCompleted" in r.out


@pytest.mark.parametrize("ptype", ["aesgcm", "secretbox"])
def test_authenticated_providers_need_no_flag_but_switching_to_aescbc_does(
        etcd1: LocalCluster, tmp_path: Path, ptype: str) -> None:
    d = tmp_path / "conf"
    d.mkdir()
    cfg = d / "enc.yaml"
    originals, selected = _prepare(etcd1)
    common = ["--endpoints", ",".join(etcd1.endpoints), "--config", str(cfg)]

    r = cli("encryption", "enable", *common, "--type", ptype)
    assert r.code == 0, r.err
    _check_stored(etcd1, cfg, originals, selected, f"{ptype}/key1")
    r = cli("encryption", "rotate", *common)
    assert r.code == 0, r.err
    _check_stored(etcd1, cfg, originals, selected, f"{ptype}/key2")
    # moving these values to aescbc would make them uncheckable: refused like a plain enable
    _refused_unchanged(etcd1, d, "encryption", "enable", *common, "--type", "aescbc")
    r = cli("encryption", "disable", *common)
    assert r.code == 0, r.err
    assert {k: v for k, (v, _rev) in _etcd(etcd1).items()} == originals
