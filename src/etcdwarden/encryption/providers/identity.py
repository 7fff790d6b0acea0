"""``identity``: values are stored as they are; data starting with ``k8s:enc:`` is refused."""

from __future__ import annotations

from etcdwarden.encryption.errors import TransformError
from etcdwarden.encryption.providers.base import ENCRYPTED_MARKER, Provider, ReadResult


class IdentityProvider(Provider):
    type_name = "identity"
    prefix = b""

    def from_storage(self, body: bytes, aad: bytes) -> ReadResult:
        if body.startswith(ENCRYPTED_MARKER):
            raise TransformError("identity transformer tried to read encrypted data", reason="no-key")
        return ReadResult(body, self.type_name, None, stale=False)

    def to_storage(self, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
        return plaintext

    @property
    def writes_plaintext(self) -> bool:
        return True
