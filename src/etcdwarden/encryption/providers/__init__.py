"""Provider registry and prefix classification of stored values.

``KEYED_PROVIDERS`` maps the configuration names of the key-based providers to their classes;
:func:`classify` tells, from the prefix alone (no key needed), which provider and key a stored value
belongs to, the way ``encryption status`` counts values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from etcdwarden.encryption.providers.aescbc import AESCBCProvider
from etcdwarden.encryption.providers.aesgcm import AESGCMProvider
from etcdwarden.encryption.providers.base import (
    ENCRYPTED_MARKER,
    KeyedProvider,
    Provider,
    ReadResult,
)
from etcdwarden.encryption.providers.identity import IdentityProvider
from etcdwarden.encryption.providers.kms import V1_PREFIX, V2_PREFIX, KMSPlugin, KMSProvider
from etcdwarden.encryption.providers.secretbox import SecretboxProvider

__all__ = [
    "ENCRYPTED_MARKER",
    "KEYED_PROVIDERS",
    "PROVIDER_TYPES",
    "AESCBCProvider",
    "AESGCMProvider",
    "IdentityProvider",
    "KMSPlugin",
    "KMSProvider",
    "KeyedProvider",
    "Provider",
    "ReadResult",
    "SecretboxProvider",
    "ValueClass",
    "build_keyed",
    "classify",
]

KEYED_PROVIDERS: dict[str, type[KeyedProvider]] = {
    "aescbc": AESCBCProvider,
    "aesgcm": AESGCMProvider,
    "secretbox": SecretboxProvider,
}
PROVIDER_TYPES = ("aescbc", "aesgcm", "secretbox", "kms", "identity")


def build_keyed(type_name: str, keys: Sequence[tuple[str, bytes]]) -> KeyedProvider:
    try:
        cls = KEYED_PROVIDERS[type_name]
    except KeyError:
        raise ValueError(f"unknown key-based provider {type_name!r}") from None
    return cls(keys)


@dataclass(frozen=True)
class ValueClass:
    """What a stored value's prefix says: provider type and key (or KMS provider) name."""

    provider: str  # identity | aescbc | aesgcm | secretbox | kms-v1 | kms-v2 | unknown
    key_name: str | None = None

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.key_name}" if self.key_name is not None else self.provider


_KEYED_PREFIXES = [(cls.prefix, name) for name, cls in KEYED_PROVIDERS.items()]


def classify(value: bytes) -> ValueClass:
    """Classify a stored value by prefix only (key names are read up to the next ``:``)."""
    if not value.startswith(ENCRYPTED_MARKER):
        return ValueClass("identity")
    for prefix, name in (*_KEYED_PREFIXES, (V1_PREFIX, "kms-v1"), (V2_PREFIX, "kms-v2")):
        if value.startswith(prefix):
            rest = value[len(prefix):len(prefix) + 256]
            if b":" not in rest:
                return ValueClass(name, "?")
            return ValueClass(name, rest.split(b":", 1)[0].decode("utf-8", errors="backslashreplace"))
    return ValueClass("unknown")
