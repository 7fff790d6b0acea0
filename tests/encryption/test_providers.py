"""Every vector of reference/encryption-vectors.json, both ways, plus the read algorithm's edges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from etcdwarden.encryption.errors import TransformError
from etcdwarden.encryption.providers import (
    AESCBCProvider,
    AESGCMProvider,
    IdentityProvider,
    KMSProvider,
    SecretboxProvider,
    build_keyed,
    classify,
)
from etcdwarden.encryption.providers.kms import EncryptedObject, open_v1, open_v2, seal_v1, seal_v2
from etcdwarden.encryption.transformer import ResourceTransformer

pytestmark = pytest.mark.unit

# a verbatim copy of shared/reference/encryption-vectors.json (see encryption.md §5)
VECTORS_PATH = Path(__file__).with_name("encryption-vectors.json")


def _load() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())
    return data


VECTORS = _load()
KEYED = [v for v in VECTORS if v["provider"] in ("aescbc", "aesgcm", "secretbox")]
KMS = [v for v in VECTORS if v["provider"].startswith("kms")]


def h(v: dict[str, Any], field: str) -> bytes:
    return bytes.fromhex(v[field])


def test_every_vector_is_covered() -> None:
    assert len(KEYED) + len(KMS) == len(VECTORS) == 11


@pytest.mark.parametrize("v", KEYED, ids=[v["name"] for v in KEYED])
def test_keyed_vector_both_ways(v: dict[str, Any]) -> None:
    p = build_keyed(v["provider"], [(v["key_name"], h(v, "key"))])
    stored, pt, key = h(v, "stored"), h(v, "plaintext"), h(v, "etcd_key")
    assert stored.startswith(p.prefix) and stored.startswith(h(v, "prefix"))
    res = p.from_storage(stored[len(p.prefix):], key)
    assert res.plaintext == pt and res.key_name == v["key_name"] and not res.stale
    assert p.to_storage(pt, key, nonce=h(v, "iv_or_nonce")) == stored
    # and through the full read path
    t = ResourceTransformer([p, IdentityProvider()])
    assert t.read(stored, key).plaintext == pt
    assert classify(stored).label == f"{v['provider']}/{v['key_name']}"


class _MockPlugin:
    """The vectors' mock plugin: wrapped = b'mock-kms-wrapped:' + key."""

    def unwrap(self, encrypted: bytes, key_id: str) -> bytes:
        assert encrypted.startswith(b"mock-kms-wrapped:")
        return encrypted[len(b"mock-kms-wrapped:"):]


@pytest.mark.parametrize("v", KMS, ids=[v["name"] for v in KMS])
def test_kms_vector_both_ways(v: dict[str, Any]) -> None:
    stored, pt, aad = h(v, "stored"), h(v, "plaintext"), h(v, "aad")
    prefix = h(v, "prefix")
    body = stored[len(prefix):]
    version = v["provider"].split("-")[1]
    assert classify(stored).label == f"kms-{version}/{v['key_name']}"
    if version == "v1":
        assert open_v1(body, aad, h(v, "key")) == (pt, False)
        assert prefix + seal_v1(pt, aad, h(v, "key"), h(v, "wrapped_dek"), h(v, "iv_or_nonce")) == stored
    else:
        obj = EncryptedObject.decode(body)
        assert obj.key_id == v["key_id"] and obj.encrypted_dek_source == h(v, "wrapped_dek")
        assert open_v2(obj, aad, h(v, "key")) == pt
        info = h(v, "info") if "info" in v else None
        again = seal_v2(pt, aad, h(v, "key"), h(v, "wrapped_dek"), v["key_id"], h(v, "iv_or_nonce"),
                        info=info, annotations=obj.annotations)
        assert prefix + again == stored
    # without a plugin: recognised, reported, not decryptable
    p = KMSProvider(v["key_name"], version)
    assert stored.startswith(p.prefix)
    with pytest.raises(TransformError) as ei:
        ResourceTransformer([p, IdentityProvider()]).read(stored, aad)
    assert ei.value.reason == "kms" and "mykms" in str(ei.value)
    # with the plugin: decrypted through the provider
    p2 = KMSProvider(v["key_name"], version, plugin=_MockPlugin())
    assert p2.from_storage(body, aad).plaintext == pt


def test_production_writes_use_fresh_nonces() -> None:
    for p in (AESCBCProvider([("k", b"\x01" * 32)]), AESGCMProvider([("k", b"\x01" * 32)]),
              SecretboxProvider([("k", b"\x01" * 32)])):
        a, b = p.to_storage(b"same", b"/k"), p.to_storage(b"same", b"/k")
        assert a != b and a.startswith(p.prefix + b"k:")
        assert p.from_storage(a[len(p.prefix):], b"/k").plaintext == b"same"


def test_gcm_aad_is_the_etcd_key() -> None:
    p = AESGCMProvider([("k", b"\x02" * 16)])
    v = p.to_storage(b"data", b"/registry/secrets/a/b")
    with pytest.raises(TransformError, match="authentication failed"):
        p.from_storage(v[len(p.prefix):], b"/registry/secrets/a/c")


def test_key_sizes() -> None:
    for n in (16, 24, 32):
        AESCBCProvider([("k", b"\x00" * n)])
        AESGCMProvider([("k", b"\x00" * n)])
    with pytest.raises(ValueError, match="expected one of"):
        SecretboxProvider([("k", b"\x00" * 16)])
    with pytest.raises(ValueError):
        AESCBCProvider([("k", b"\x00" * 8)])


def test_read_algorithm_order_and_stale() -> None:
    old = AESCBCProvider([("new", b"\x03" * 32), ("old", b"\x04" * 32)])
    writer_old = AESCBCProvider([("old", b"\x04" * 32)])
    t = ResourceTransformer([old, IdentityProvider()])
    v_old = writer_old.to_storage(b"{}", b"/k")
    r = t.read(v_old, b"/k")
    assert r.plaintext == b"{}" and r.key_name == "old" and r.stale
    assert not t.is_current(v_old) and t.is_current(t.write(b"{}", b"/k"))
    plain = t.read(b"k8s\x00abc", b"/k")
    assert plain.provider == "identity" and plain.stale
    with pytest.raises(TransformError) as ei:
        t.read(AESCBCProvider([("other", b"\x05" * 32)]).to_storage(b"x", b"/k"), b"/k")
    assert ei.value.reason == "no-key" and "other" in str(ei.value)
    ident = ResourceTransformer([IdentityProvider()])
    with pytest.raises(TransformError):
        ident.read(v_old, b"/k")
    assert ident.is_current(b"{}") and not ident.is_current(v_old)


def test_wrong_key_names_the_key_not_the_secret() -> None:
    secret = b"\x06" * 32
    writer = AESGCMProvider([("key1", b"\x07" * 32)])
    t = ResourceTransformer([AESGCMProvider([("key1", secret)])])
    with pytest.raises(TransformError) as ei:
        t.read(writer.to_storage(b"x", b"/k"), b"/k")
    msg = str(ei.value)
    assert "key1" in msg and ei.value.reason == "auth"
    assert secret.hex() not in msg and "BgYG" not in msg


def test_classify() -> None:
    assert classify(b"k8s\x00...").label == "identity"
    assert classify(b"{}").label == "identity"
    assert classify(b"k8s:enc:weird:v9:x").provider == "unknown"
    assert classify(b"k8s:enc:aescbc:v1:nokeysep").label == "aescbc/?"
