"""The provider interface shared by every at-rest format.

A *provider* owns one stored-value prefix (``k8s:enc:aescbc:v1:``; empty for identity) and turns a
plaintext into the body written after that prefix and back. Key-based providers (aescbc, aesgcm,
secretbox) hold an ordered list of named keys: the first key writes, every key reads, and a body
starts with ``<keyname>:`` exactly as kube-apiserver's nested prefix dispatcher expects.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from etcdwarden.encryption.errors import TransformError

ENCRYPTED_MARKER = b"k8s:enc:"


@dataclass(frozen=True)
class ReadResult:
    """A decrypted value and where it came from (``key_name`` is None for identity)."""

    plaintext: bytes
    provider: str
    key_name: str | None
    stale: bool


class Provider(ABC):
    """One element of an EncryptionConfiguration ``providers`` list."""

    #: provider type as spelled in the configuration (``aescbc``, ``identity``, ``kms``...)
    type_name: str = ""
    #: bytes every value written by this provider starts with
    prefix: bytes = b""

    @abstractmethod
    def from_storage(self, body: bytes, aad: bytes) -> ReadResult:
        """Decrypt ``body`` (the stored value with :attr:`prefix` removed)."""

    @abstractmethod
    def to_storage(self, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
        """The full stored value (prefix included). ``nonce`` is for test vectors only."""

    @property
    def writes_plaintext(self) -> bool:
        return False

    def write_prefix(self) -> bytes:
        """The prefix of every value this provider writes (prefix + write key name + ``:``)."""
        return self.prefix

    def label(self) -> str:
        return self.type_name


class KeyCipher(ABC):
    """One key of a key-based provider: the raw cipher without any prefix."""

    nonce_size: int = 0

    @abstractmethod
    def seal(self, plaintext: bytes, aad: bytes, nonce: bytes) -> bytes:
        """``nonce || ciphertext...`` in the provider's layout."""

    @abstractmethod
    def open(self, body: bytes, aad: bytes) -> bytes:
        """Inverse of :meth:`seal`; raise :class:`TransformError` on any failure."""


class KeyedProvider(Provider):
    """A provider with named keys; the first key writes (``keys[0]``), all keys read."""

    #: accepted decoded key lengths
    key_sizes: tuple[int, ...] = (32,)

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError(f"{self.type_name}: at least one key is required")
        self._keys: list[tuple[str, bytes, KeyCipher]] = []
        for name, secret in keys:
            if len(secret) not in self.key_sizes:
                raise ValueError(
                    f"{self.type_name} key {name!r}: key is {len(secret)} bytes, expected one of "
                    f"{list(self.key_sizes)}"
                )
            self._keys.append((name, (name + ":").encode(), self.make_cipher(secret)))

    @abstractmethod
    def make_cipher(self, secret: bytes) -> KeyCipher:
        """Build the cipher of one key."""

    @property
    def key_names(self) -> list[str]:
        return [k[0] for k in self._keys]

    @property
    def write_key_name(self) -> str:
        return self._keys[0][0]

    def write_prefix(self) -> bytes:
        return self.prefix + self._keys[0][1]

    def label(self) -> str:
        return f"{self.type_name}/{self.write_key_name}"

    def to_storage(self, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
        _name, kprefix, cipher = self._keys[0]
        if nonce is None:
            nonce = os.urandom(cipher.nonce_size)
        elif len(nonce) != cipher.nonce_size:
            raise ValueError(f"{self.type_name}: nonce must be {cipher.nonce_size} bytes")
        return self.prefix + kprefix + cipher.seal(plaintext, aad, nonce)

    def from_storage(self, body: bytes, aad: bytes) -> ReadResult:
        # kube-apiserver's nested prefix dispatcher: keys in order, first one that decrypts wins
        errors: list[str] = []
        for i, (name, kprefix, cipher) in enumerate(self._keys):
            if not body.startswith(kprefix):
                continue
            try:
                pt = cipher.open(body[len(kprefix):], aad)
            except TransformError as e:
                errors.append(f"{self.type_name} key {name!r}: {e}")
                continue
            return ReadResult(pt, self.type_name, name, stale=i != 0)
        if errors:
            raise TransformError("; ".join(errors), reason="auth", key_name=self._keys[0][0])
        head = body.split(b":", 1)[0][:64] if b":" in body[:65] else b"?"
        found = head.decode("ascii", errors="backslashreplace")
        raise TransformError(
            f"no matching key was found for the provided {self.type_name} transformer: the value names "
            f"key {found!r}, configured keys are {self.key_names}",
            reason="no-key",
            key_name=found,
        )
