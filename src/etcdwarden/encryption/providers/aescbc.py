"""``aescbc``: ``k8s:enc:aescbc:v1:<key>:`` || IV(16) || AES-CBC(PKCS#7(plaintext)); no AAD.

Keys of 16, 24 or 32 bytes are accepted (kube-apiserver's validation); etcdwarden generates 32.
CBC is unauthenticated: a wrong key is usually caught by the padding check only, so callers that
rewrite data also check that the plaintext looks like a Kubernetes object.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from etcdwarden.encryption.errors import TransformError
from etcdwarden.encryption.providers.base import KeyCipher, KeyedProvider

BLOCK = 16


class _CBCKey(KeyCipher):
    nonce_size = BLOCK

    def __init__(self, secret: bytes) -> None:
        self._alg = algorithms.AES(secret)

    def seal(self, plaintext: bytes, aad: bytes, nonce: bytes) -> bytes:
        pad = BLOCK - len(plaintext) % BLOCK
        enc = Cipher(self._alg, modes.CBC(nonce)).encryptor()
        return nonce + enc.update(plaintext + bytes([pad]) * pad) + enc.finalize()

    def open(self, body: bytes, aad: bytes) -> bytes:
        if len(body) < BLOCK:
            raise TransformError("the stored data was shorter than the required size", reason="format")
        iv, data = body[:BLOCK], body[BLOCK:]
        if len(data) % BLOCK != 0:
            raise TransformError("the stored data is not a multiple of the block size", reason="format")
        dec = Cipher(self._alg, modes.CBC(iv)).decryptor()
        out = dec.update(data) + dec.finalize()
        n = out[-1] if out else 0
        if n == 0 or n > len(out):
            raise TransformError("invalid PKCS7 data (empty or not padded): wrong key?", reason="auth")
        if out[-n:] != bytes([n]) * n:
            raise TransformError("invalid padding on input: wrong key?", reason="auth")
        return out[:-n]


class AESCBCProvider(KeyedProvider):
    type_name = "aescbc"
    prefix = b"k8s:enc:aescbc:v1:"
    key_sizes = (16, 24, 32)

    def make_cipher(self, secret: bytes) -> KeyCipher:
        return _CBCKey(secret)
