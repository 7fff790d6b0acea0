"""``secretbox``: ``k8s:enc:secretbox:v1:<key>:`` || nonce(24) || poly1305 tag(16) || XSalsa20 ct.

This is NaCl ``crypto_secretbox`` (libsodium through PyNaCl); 32-byte keys only; no AAD.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.secret

from etcdwarden.encryption.errors import TransformError
from etcdwarden.encryption.providers.base import KeyCipher, KeyedProvider

NONCE = 24
TAG = 16


class _BoxKey(KeyCipher):
    nonce_size = NONCE

    def __init__(self, secret: bytes) -> None:
        self._box = nacl.secret.SecretBox(secret)

    def seal(self, plaintext: bytes, aad: bytes, nonce: bytes) -> bytes:
        return bytes(self._box.encrypt(plaintext, nonce))

    def open(self, body: bytes, aad: bytes) -> bytes:
        if len(body) < NONCE + TAG:
            raise TransformError("the stored data was shorter than the required size", reason="format")
        try:
            return self._box.decrypt(body)
        except nacl.exceptions.CryptoError:
            raise TransformError("secretbox authentication failed: wrong key?", reason="auth") from None


class SecretboxProvider(KeyedProvider):
    type_name = "secretbox"
    prefix = b"k8s:enc:secretbox:v1:"
    key_sizes = (32,)

    def make_cipher(self, secret: bytes) -> KeyCipher:
        return _BoxKey(secret)
