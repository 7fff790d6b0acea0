"""``aesgcm``: ``k8s:enc:aesgcm:v1:<key>:`` || nonce(12) || ciphertext || tag(16); AAD = etcd key."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from etcdwarden.encryption.errors import TransformError
from etcdwarden.encryption.providers.base import KeyCipher, KeyedProvider

NONCE = 12
TAG = 16


class _GCMKey(KeyCipher):
    nonce_size = NONCE

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(secret)

    def seal(self, plaintext: bytes, aad: bytes, nonce: bytes) -> bytes:
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, body: bytes, aad: bytes) -> bytes:
        if len(body) < NONCE + TAG:
            raise TransformError("the stored data was shorter than the required size", reason="format")
        try:
            return self._aead.decrypt(body[:NONCE], body[NONCE:], aad)
        except InvalidTag:
            raise TransformError(
                "message authentication failed (wrong key, or the value was moved to another etcd key)",
                reason="auth",
            ) from None


def gcm_open(key: bytes, body: bytes, aad: bytes) -> bytes:
    """AES-GCM ``nonce || ct || tag`` with any AES key size (shared with the KMS envelope formats)."""
    return _GCMKey(key).open(body, aad)


def gcm_seal(key: bytes, plaintext: bytes, aad: bytes, nonce: bytes) -> bytes:
    return _GCMKey(key).seal(plaintext, aad, nonce)


class AESGCMProvider(KeyedProvider):
    type_name = "aesgcm"
    prefix = b"k8s:enc:aesgcm:v1:"
    key_sizes = (16, 24, 32)

    def make_cipher(self, secret: bytes) -> KeyCipher:
        return _GCMKey(secret)
