"""KMS envelope values (``k8s:enc:kms:v1:<name>:`` and ``k8s:enc:kms:v2:<name>:``).

etcdwarden does not speak the KMS plugin protocol, so these values are *recognised* (provider name,
wrapped-DEK size, KMSv2 key ID) and reported, not decrypted. The envelope layouts are implemented in
full behind a :class:`KMSPlugin` (wrap/unwrap of the DEK or seed) so that a plugin bridge, and the
test vectors, can use them:

* v1: ``uint16_be(len(encDEK)) || encDEK || nonce(12) || AES-GCM(DEK, pt, AAD=etcd key) || tag``;
  values written by old servers used AES-CBC with the DEK (read fallback, marked stale).
* v2: protobuf ``EncryptedObject{1 encryptedData, 2 keyID, 3 encryptedDEKSource, 4 annotations,
  5 encryptedDEKSourceType}``; type 1 (seed) derives ``DEK = HKDF-Expand(SHA-256, seed, info, 32)``
  with ``encryptedData = info(32) || nonce || ct || tag``; type 0 uses the DEK directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from etcdwarden.encryption.errors import TransformError
from etcdwarden.encryption.providers.aescbc import _CBCKey
from etcdwarden.encryption.providers.aesgcm import gcm_open, gcm_seal
from etcdwarden.encryption.providers.base import Provider, ReadResult

V1_PREFIX = b"k8s:enc:kms:v1:"
V2_PREFIX = b"k8s:enc:kms:v2:"
SOURCE_AES_GCM_KEY = 0
SOURCE_HKDF_SEED = 1
INFO_SIZE = 32


class KMSPlugin(Protocol):
    """What a KMS plugin bridge must provide to decrypt envelope values."""

    def unwrap(self, encrypted: bytes, key_id: str) -> bytes:
        """Decrypt a wrapped DEK (v1) or DEK source (v2); ``key_id`` is empty for v1."""
        ...


# --- v1 ----------------------------------------------------------------------------------------


def parse_v1(body: bytes) -> tuple[bytes, bytes]:
    """``(encDEK, gcm_body)`` of a KMSv1 body."""
    if len(body) < 2:
        raise TransformError("KMSv1 value too short", reason="format")
    n = int.from_bytes(body[:2], "big")
    if n == 0 or len(body) < 2 + n:
        raise TransformError("KMSv1 value has an invalid encrypted DEK length", reason="format")
    return body[2:2 + n], body[2 + n:]


def seal_v1(plaintext: bytes, aad: bytes, dek: bytes, wrapped_dek: bytes, nonce: bytes) -> bytes:
    if not 0 < len(wrapped_dek) < 1 << 16:
        raise ValueError("wrapped DEK must be 1..65535 bytes")
    return len(wrapped_dek).to_bytes(2, "big") + wrapped_dek + gcm_seal(dek, plaintext, aad, nonce)


def open_v1(body: bytes, aad: bytes, dek: bytes) -> tuple[bytes, bool]:
    """Plaintext and stale flag (True when the legacy AES-CBC fallback was needed)."""
    _wrapped, data = parse_v1(body)
    try:
        return gcm_open(dek, data, aad), False
    except TransformError:
        return _CBCKey(dek).open(data, aad), True


# --- v2 (minimal protobuf wire format) ----------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise TransformError("KMSv2 EncryptedObject: truncated varint", reason="format")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _field(num: int, data: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(data)) + data


@dataclass
class EncryptedObject:
    encrypted_data: bytes = b""
    key_id: str = ""
    encrypted_dek_source: bytes = b""
    annotations: dict[str, bytes] = field(default_factory=dict)
    source_type: int = SOURCE_AES_GCM_KEY

    def encode(self) -> bytes:
        out = _field(1, self.encrypted_data) + _field(2, self.key_id.encode()) + _field(3, self.encrypted_dek_source)
        for k in sorted(self.annotations):
            out += _field(4, _field(1, k.encode()) + _field(2, self.annotations[k]))
        if self.source_type:
            out += _varint(5 << 3) + _varint(self.source_type)
        return out

    @classmethod
    def decode(cls, buf: bytes) -> EncryptedObject:
        obj = cls()
        i = 0
        while i < len(buf):
            tag, i = _read_varint(buf, i)
            num, wire = tag >> 3, tag & 7
            if wire == 0:
                val, i = _read_varint(buf, i)
                if num == 5:
                    obj.source_type = val
                continue
            if wire != 2:
                raise TransformError(f"KMSv2 EncryptedObject: unexpected wire type {wire}", reason="format")
            n, i = _read_varint(buf, i)
            if i + n > len(buf):
                raise TransformError("KMSv2 EncryptedObject: truncated field", reason="format")
            data, i = buf[i:i + n], i + n
            if num == 1:
                obj.encrypted_data = data
            elif num == 2:
                obj.key_id = data.decode("utf-8", errors="replace")
            elif num == 3:
                obj.encrypted_dek_source = data
            elif num == 4:
                entry = cls._map_entry(data)
                obj.annotations[entry[0]] = entry[1]
        if not obj.key_id or not obj.encrypted_dek_source:
            raise TransformError("KMSv2 EncryptedObject lacks keyID or encryptedDEKSource", reason="format")
        return obj

    @staticmethod
    def _map_entry(buf: bytes) -> tuple[str, bytes]:
        key, val, i = "", b"", 0
        while i < len(buf):
            tag, i = _read_varint(buf, i)
            n, i = _read_varint(buf, i)
            data, i = buf[i:i + n], i + n
            if tag >> 3 == 1:
                key = data.decode("utf-8", errors="replace")
            elif tag >> 3 == 2:
                val = data
        return key, val


def derive_v2_dek(seed: bytes, info: bytes) -> bytes:
    return HKDFExpand(algorithm=SHA256(), length=32, info=info).derive(seed)


def seal_v2(plaintext: bytes, aad: bytes, key: bytes, wrapped: bytes, key_id: str, nonce: bytes,
            info: bytes | None = None, annotations: Mapping[str, bytes] | None = None) -> bytes:
    """An ``EncryptedObject``; with ``info`` the seed type (``key`` is the seed), else the DEK type."""
    if info is not None:
        data = info + gcm_seal(derive_v2_dek(key, info), plaintext, aad, nonce)
        stype = SOURCE_HKDF_SEED
    else:
        data = gcm_seal(key, plaintext, aad, nonce)
        stype = SOURCE_AES_GCM_KEY
    return EncryptedObject(data, key_id, wrapped, dict(annotations or {}), stype).encode()


def open_v2(obj: EncryptedObject, aad: bytes, key: bytes) -> bytes:
    """Decrypt with the unwrapped DEK (type 0) or seed (type 1)."""
    if obj.source_type == SOURCE_HKDF_SEED:
        if len(obj.encrypted_data) < INFO_SIZE:
            raise TransformError("KMSv2 encryptedData too short", reason="format")
        info = obj.encrypted_data[:INFO_SIZE]
        return gcm_open(derive_v2_dek(key, info), obj.encrypted_data[INFO_SIZE:], aad)
    if obj.source_type == SOURCE_AES_GCM_KEY:
        return gcm_open(key, obj.encrypted_data, aad)
    raise TransformError(f"KMSv2 unknown encryptedDEKSourceType {obj.source_type}", reason="format")


# --- provider ------------------------------------------------------------------------------------


class KMSProvider(Provider):
    """A ``kms`` provider entry: recognised; decryptable only with a :class:`KMSPlugin`."""

    type_name = "kms"

    def __init__(self, name: str, api_version: str = "v1", plugin: KMSPlugin | None = None) -> None:
        if api_version not in ("v1", "v2"):
            raise ValueError(f"kms apiVersion must be v1 or v2, not {api_version!r}")
        self.name = name
        self.api_version = api_version
        self.plugin = plugin
        self.prefix = (V1_PREFIX if api_version == "v1" else V2_PREFIX) + name.encode() + b":"

    def label(self) -> str:
        return f"kms-{self.api_version}/{self.name}"

    def from_storage(self, body: bytes, aad: bytes) -> ReadResult:
        if self.api_version == "v1":
            wrapped, _ = parse_v1(body)
            key_id = ""
        else:
            obj = EncryptedObject.decode(body)
            key_id = obj.key_id
            wrapped = obj.encrypted_dek_source
        if self.plugin is None:
            raise TransformError(
                f"value is encrypted by KMS{self.api_version} provider {self.name!r}"
                f"{f' (key ID {key_id!r})' if key_id else ''}; etcdwarden cannot decrypt it without "
                "the KMS plugin", reason="kms", key_name=self.name)
        key = self.plugin.unwrap(wrapped, key_id)
        if self.api_version == "v1":
            pt, stale = open_v1(body, aad, key)
        else:
            pt, stale = open_v2(obj, aad, key), False
        return ReadResult(pt, self.label(), self.name, stale)

    def to_storage(self, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
        raise TransformError(
            f"etcdwarden cannot write with KMS provider {self.name!r} (no KMS plugin support); "
            "put an aescbc, aesgcm, secretbox or identity provider first", reason="kms", key_name=self.name)
