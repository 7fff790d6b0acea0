"""Errors of the encryption-at-rest package.

Messages name keys by their *name* (``aescbc/key1``) and etcd keys by their path; they never contain
key material or value bytes.
"""

from __future__ import annotations

from etcdwarden.errors import EtcdwardenError, UsageError


class EncryptionConfigError(UsageError):
    """The EncryptionConfiguration file is malformed or fails kube-apiserver's validation (exit 2)."""


class TransformError(EtcdwardenError):
    """A stored value could not be decrypted (or encrypted) by the configured providers.

    ``reason`` is one of ``auth`` (wrong key or corrupt data), ``no-key`` (no configured key/provider
    matches the value's prefix), ``kms`` (a KMS value: needs the plugin), ``unknown`` (an unknown
    ``k8s:enc:`` format) or ``format`` (truncated or otherwise malformed body).
    """

    def __init__(self, message: str, reason: str = "auth", key_name: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.key_name = key_name


def etcd_key_text(key: bytes) -> str:
    """An etcd key for messages: ASCII as is, anything else escaped (never raises)."""
    return key.decode("ascii", errors="backslashreplace")
