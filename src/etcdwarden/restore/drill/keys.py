"""Does every Kubernetes value of a restored backup decode? The check a drill makes of each key it reads.

A value under a Kubernetes prefix (``/registry/``, ``/kubernetes.io/``, ``/openshift.io/``) decodes when it
is one of:

* a Kubernetes object as kube-apiserver stores it: JSON (an object), protobuf (the ``k8s\\0`` envelope) or
  CBOR (:func:`etcdwarden.encryption.plaintext.looks_like_kubernetes_object`);
* encrypted at rest (``k8s:enc:<provider>:v1:<key name>:``) with a key whose name is in the
  EncryptionConfiguration the backup bundles. A value of a key-based provider (aescbc, aesgcm, secretbox)
  is also decrypted with that key (the etcd key is its authenticated data) and must then be a Kubernetes
  object; a KMS value cannot be decrypted here, its provider name is checked only.

A value encrypted with a key the bundle does not hold would be unreadable after a restore: that fails
the drill, as does an unknown ``k8s:enc:`` format or a value that is no Kubernetes object at all. The
counts are complete; the first :data:`EXAMPLES` failures are kept with their etcd key (never the value).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.encryption.errors import TransformError, etcd_key_text
from etcdwarden.encryption.plaintext import CBOR_MAGIC, PROTOBUF_MAGIC, looks_like_kubernetes_object
from etcdwarden.encryption.providers import ENCRYPTED_MARKER, Provider, classify

KUBERNETES_PREFIXES = (b"/registry/", b"/kubernetes.io/", b"/openshift.io/")
EXAMPLES = 20
_KMS = ("kms-v1", "kms-v2")


@dataclass
class KeyDecoding:
    """What the values under the Kubernetes prefixes turned out to be."""

    keys: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # json, protobuf, cbor, <provider>/<key>
    failed: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def fail(self, key: bytes, why: str) -> None:
        self.failed += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{etcd_key_text(key)}: {why}")

    def summary(self) -> str:
        if not self.keys:
            return "no Kubernetes keys (/registry/, /kubernetes.io/, /openshift.io/)"
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.kinds.items()))
        head = f"{self.keys} Kubernetes keys: {kinds or 'none decoded'}"
        if self.failed:
            head += f"; {self.failed} do not decode, e.g. " + "; ".join(self.examples[:3])
        return head


class Decoder:
    """Checks values against the bundled EncryptionConfiguration(s) (none: no encrypted value is readable)."""

    def __init__(self, configs: Sequence[EncryptionConfiguration] = ()) -> None:
        self.key_names: set[str] = set()
        # (provider type, key name) -> providers that hold that key (one per configuration entry)
        self.providers: dict[tuple[str, str], list[Provider]] = {}
        self.kms_names: set[str] = set()
        for cfg in configs:
            self.key_names |= cfg.key_names()
            for rc in cfg.resources:
                for pc in rc.providers:
                    if pc.type == "kms" and pc.kms is not None:
                        self.kms_names.add(pc.kms.name)
                    elif pc.keys:
                        built = pc.build()
                        for k in pc.keys:
                            self.providers.setdefault((pc.type, k.name), []).append(built)

    def check(self, key: bytes, value: bytes, out: KeyDecoding) -> None:
        out.keys += 1
        if not value.startswith(ENCRYPTED_MARKER):
            if looks_like_kubernetes_object(value):
                out.kinds[_plain_kind(value)] += 1
            else:
                out.fail(key, "not a Kubernetes object (JSON, protobuf k8s\\0 or CBOR) and not encrypted")
            return
        vc = classify(value)
        if vc.provider == "unknown" or vc.key_name in (None, "?"):
            out.fail(key, "encrypted in an unknown k8s:enc: format")
            return
        name = vc.key_name
        assert name is not None
        if vc.provider in _KMS:
            if name in self.kms_names:
                out.kinds[f"{vc.label} (KMS: provider name checked, not decrypted)"] += 1
            else:
                out.fail(key, f"encrypted by KMS provider {name!r}, which the bundled EncryptionConfiguration does "
                              "not name")
            return
        found = self.providers.get((vc.provider, name))
        if not found:
            where = "holds no such key" if self.key_names or self.kms_names else "is missing from the backup"
            out.fail(key, f"encrypted with {vc.label}: the bundled EncryptionConfiguration {where}, so the value "
                          "would be unreadable after a restore")
            return
        why = "cannot be decrypted"
        for p in found:
            try:
                res = p.from_storage(value[len(p.prefix):], key)
            except TransformError as e:
                why = f"cannot be decrypted with {vc.label} of the bundled EncryptionConfiguration ({e.reason})"
                continue
            if looks_like_kubernetes_object(res.plaintext):
                out.kinds[vc.label] += 1
                return
            why = f"decrypts with {vc.label} to something that is not a Kubernetes object (a wrong key?)"
        out.fail(key, why)


def _plain_kind(value: bytes) -> str:
    if value.startswith(PROTOBUF_MAGIC):
        return "protobuf"
    if value.startswith(CBOR_MAGIC):
        return "cbor"
    return "json"


def is_kubernetes_key(key: bytes) -> bool:
    return key.startswith(KUBERNETES_PREFIXES)


def decode_all(items: Iterable[tuple[bytes, bytes]], decoder: Decoder, out: KeyDecoding | None = None) -> KeyDecoding:
    """Check every (key, value) under a Kubernetes prefix of ``items`` (others are skipped)."""
    result = out if out is not None else KeyDecoding()
    for key, value in items:
        if is_kubernetes_key(key):
            decoder.check(key, value, result)
    return result
