"""kube-apiserver's read and write paths over one resource's provider list.

Read (``prefixTransformers.TransformFromStorage``): providers in order; the first whose prefix matches
and that decrypts wins; identity (empty prefix) refusing ``k8s:enc:`` data is skipped silently; a value
read by any provider but the first (or any key but the first) is *stale*. Write: provider 0, key 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from etcdwarden.encryption.errors import TransformError
from etcdwarden.encryption.providers import (
    ENCRYPTED_MARKER,
    IdentityProvider,
    KMSProvider,
    Provider,
    ReadResult,
    classify,
)

_REASON_ORDER = ("auth", "format", "kms", "no-key", "unknown")


class ResourceTransformer:
    """The transformer of one group-resource (identity-only when the resource is not configured)."""

    def __init__(self, providers: Sequence[Provider]) -> None:
        self.providers: list[Provider] = list(providers) or [IdentityProvider()]

    @property
    def write_provider(self) -> Provider:
        return self.providers[0]

    @property
    def write_label(self) -> str:
        return self.write_provider.label()

    @property
    def can_write(self) -> bool:
        return not isinstance(self.write_provider, KMSProvider)

    def is_current(self, data: bytes) -> bool:
        """Whether ``data`` is already in the write format (prefix check; no decryption)."""
        w = self.write_provider
        if w.writes_plaintext:
            return not data.startswith(ENCRYPTED_MARKER)
        return data.startswith(w.write_prefix())

    def read(self, data: bytes, aad: bytes) -> ReadResult:
        errors: list[TransformError] = []
        for i, p in enumerate(self.providers):
            if not data.startswith(p.prefix):
                continue
            try:
                res = p.from_storage(data[len(p.prefix):], aad)
            except TransformError as e:
                if p.prefix:
                    errors.append(e)
                continue
            if i != 0 and not res.stale:
                res = ReadResult(res.plaintext, res.provider, res.key_name, stale=True)
            return res
        if errors:
            reason = min((e.reason for e in errors), key=lambda r: _REASON_ORDER.index(r)
                         if r in _REASON_ORDER else len(_REASON_ORDER))
            key_name = next((e.key_name for e in errors if e.reason == reason), None)
            raise TransformError("; ".join(str(e) for e in errors), reason=reason, key_name=key_name)
        vc = classify(data)
        if vc.provider.startswith("kms"):
            raise TransformError(f"value is encrypted by {vc.label}, which is not in the configuration "
                                 "(and etcdwarden cannot decrypt KMS values)", reason="kms", key_name=vc.key_name)
        if vc.provider == "unknown":
            raise TransformError("value starts with k8s:enc: but has an unknown format", reason="unknown")
        configured = [p.label() for p in self.providers]
        raise TransformError(f"no matching prefix found: value is {vc.label}, configured providers are "
                             f"{configured}", reason="no-key", key_name=vc.key_name)

    def write(self, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
        return self.write_provider.to_storage(plaintext, aad, nonce)
