"""What is stored where, proven by decryption: per-resource counts by provider/key, and conditions.

Every value of the selected resources is read *and decrypted* with the configuration's read path; a
prefix names the key a value claims to use, only a successful decryption shows the configured key is
the right one. Per provider/key label a :class:`LabelProof` counts the values it decrypted (trusted:
identity, an authenticated aesgcm/secretbox decryption, or an aescbc one that yields a Kubernetes
object), the aescbc values whose padding was right but whose plaintext is not a Kubernetes object
(unproven: a wrong key or not an object, see :mod:`.plaintext`), and the failures. A label that fails
on at least as many values as it proves is a *wrong key*.

The ``Encrypted`` condition follows library-go's condition controller, plus one state of our own:

* ``DecryptionFailed`` – some values cannot be decrypted with the configured keys (never "completed");
* ``EncryptionDisabled`` – "Encryption is not enabled" (no key-based provider configured at all);
* ``EncryptionCompleted`` – "All resources encrypted: secrets, configmaps";
* ``EncryptionInProgress`` – "Resource secrets is being encrypted (...)" with counts, or
  "Resource secrets is not encrypted" when its write provider is identity;
* ``DecryptionInProgress`` / ``DecryptionCompleted`` – when every write provider is identity.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.encryption.errors import TransformError, etcd_key_text
from etcdwarden.encryption.plaintext import looks_like_kubernetes_object
from etcdwarden.encryption.providers import KEYED_PROVIDERS, classify
from etcdwarden.encryption.resources import Resource
from etcdwarden.encryption.transformer import ResourceTransformer
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient, prefix_end

EXAMPLES = 20  # problem values remembered per resource (the counts are always complete)
UNVERIFIABLE = ("kms", "unknown")  # formats etcdwarden cannot decrypt at all


@dataclass
class LabelProof:
    """How the values stored under one provider/key label fared when decrypted."""

    trusted: int = 0
    unproven: int = 0  # aescbc: padding and key name right, plaintext not a Kubernetes object
    failed: int = 0
    unverifiable: int = 0  # KMS or an unknown k8s:enc: format
    reasons: Counter[str] = field(default_factory=Counter)
    first_failure: str | None = None  # an etcd key that failed, for messages

    @property
    def wrong_key(self) -> bool:
        """Fails on at least as many values as it proves: not a corrupt value, a wrong (or missing) key."""
        return self.failed > 0 and self.failed >= self.trusted

    def to_dict(self) -> dict[str, int]:
        return {"trusted": self.trusted, "unproven": self.unproven, "failed": self.failed,
                "unverifiable": self.unverifiable}


@dataclass
class ResourceStatus:
    resource: str
    write: str  # write provider label, e.g. aescbc/key2 or identity
    total: int = 0
    by_label: Counter[str] = field(default_factory=Counter)
    proofs: dict[str, LabelProof] = field(default_factory=dict)
    non_kubernetes: int = 0  # would be rewritten, and aescbc cannot check them (see plaintext.py)
    non_kubernetes_keys: list[str] = field(default_factory=list)  # the first EXAMPLES of them
    problems: list[str] = field(default_factory=list)  # the first EXAMPLES undecryptable values, with why

    @property
    def on_write(self) -> int:
        return self.by_label.get(self.write, 0)

    @property
    def pending(self) -> int:
        return self.total - self.on_write

    @property
    def unreadable(self) -> int:
        return sum(p.failed for p in self.proofs.values())

    @property
    def unverifiable(self) -> int:
        return sum(p.unverifiable for p in self.proofs.values())

    def wrong_keys(self) -> dict[str, LabelProof]:
        """The aescbc/aesgcm/secretbox labels whose key fails on most of its values."""
        return {label: p for label, p in sorted(self.proofs.items())
                if p.wrong_key and label.split("/", 1)[0] in KEYED_PROVIDERS}

    def add(self, key: bytes, value: bytes, t: ResourceTransformer) -> None:
        """Count one stored value, decrypting it with ``t`` (the resource's read path)."""
        label = classify(value).label
        self.total += 1
        self.by_label[label] += 1
        proof = self.proofs.setdefault(label, LabelProof())
        try:
            res = t.read(value, key)
        except TransformError as e:
            if e.reason in UNVERIFIABLE:
                proof.unverifiable += 1
            else:
                proof.failed += 1
                proof.reasons[str(e)] += 1
                proof.first_failure = proof.first_failure or etcd_key_text(key)
            if len(self.problems) < EXAMPLES:
                self.problems.append(f"{etcd_key_text(key)}: cannot decrypt ({e})")
            return
        is_object = looks_like_kubernetes_object(res.plaintext)
        if res.provider == "aescbc" and not is_object:
            proof.unproven += 1
        else:
            proof.trusted += 1
        if not is_object and not t.is_current(value) and "aescbc" in (res.provider, t.write_provider.type_name):
            self.non_kubernetes += 1
            if len(self.non_kubernetes_keys) < EXAMPLES:
                self.non_kubernetes_keys.append(etcd_key_text(key))

    def to_dict(self) -> dict[str, Any]:
        return {"resource": self.resource, "write": self.write, "total": self.total,
                "on_write_provider": self.on_write, "pending": self.pending, "unreadable": self.unreadable,
                "unverifiable": self.unverifiable, "non_kubernetes": self.non_kubernetes,
                "by_provider": dict(sorted(self.by_label.items())),
                "decryption": {label: p.to_dict() for label, p in sorted(self.proofs.items())},
                "problems": list(self.problems)}


@dataclass
class Condition:
    type: str
    status: str
    reason: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


@dataclass
class EncryptionStatus:
    resources: list[ResourceStatus]
    condition: Condition

    @property
    def unreadable(self) -> int:
        return sum(r.unreadable for r in self.resources)

    def to_dict(self) -> dict[str, Any]:
        return {"conditions": [self.condition.to_dict()], "resources": [r.to_dict() for r in self.resources]}


async def survey(client: EtcdClient, t: ResourceTransformer, r: Resource, st: ResourceStatus,
                 page_size: int = 1000) -> None:
    """Read and decrypt every value under ``r``'s prefixes (paginated by key) into ``st``."""
    for prefix in r.prefixes:
        key, end = prefix, prefix_end(prefix)
        while True:
            resp = await client.range(pb.RangeRequest(key=key, range_end=end, limit=page_size))
            for kv in resp.kvs:
                st.add(kv.key, kv.value, t)
            if not resp.more or not resp.kvs:
                break
            key = resp.kvs[-1].key + b"\x00"


async def collect(client: EtcdClient, config: EncryptionConfiguration | None,
                  resources: Sequence[Resource], page_size: int = 1000) -> EncryptionStatus:
    cfg = config or EncryptionConfiguration()
    out: list[ResourceStatus] = []
    for r in resources:
        t = cfg.transformer_for(r.name)
        st = ResourceStatus(r.name, t.write_label)
        await survey(client, t, r, st, page_size)
        out.append(st)
    return EncryptionStatus(out, condition(cfg, out))


def condition(cfg: EncryptionConfiguration, resources: Sequence[ResourceStatus]) -> Condition:
    def cond(status: str, reason: str, message: str) -> Condition:
        return Condition("Encrypted", status, reason, message)

    broken = [r for r in resources if r.unreadable]
    if broken:
        detail = "; ".join(
            f"Resource {r.resource}: {r.unreadable} of {r.total} values cannot be decrypted ("
            + ", ".join(f"{label}: {p.failed}" for label, p in sorted(r.proofs.items()) if p.failed) + ")"
            for r in broken)
        return cond("False", "DecryptionFailed",
                    f"{detail}; the configured keys do not decrypt what is stored (wrong or missing key?)")
    unchecked = sum(r.unverifiable for r in resources)
    note = f" ({unchecked} KMS value(s) not checked: etcdwarden cannot decrypt KMS)" if unchecked else ""
    any_keys = any(p.type != "identity" for rc in cfg.resources for p in rc.providers)
    if not any_keys:
        return cond("False", "EncryptionDisabled", "Encryption is not enabled" + note)
    if all(r.write == "identity" for r in resources):
        left = [r for r in resources if r.pending]
        if not left:
            return cond("False", "DecryptionCompleted",
                        "Encryption mode set to identity and everything is decrypted" + note)
        detail = ", ".join(f"{r.resource}: {r.pending} of {r.total} values still encrypted" for r in left)
        return cond("False", "DecryptionInProgress",
                    f"Encryption mode set to identity and decryption is not finished ({detail})")
    for r in resources:
        if r.write == "identity":
            return cond("False", "EncryptionInProgress", f"Resource {r.resource} is not encrypted")
    left = [r for r in resources if r.pending]
    if not left:
        return cond("True", "EncryptionCompleted",
                    "All resources encrypted: " + ", ".join(r.resource for r in resources) + note)
    detail = "; ".join(f"Resource {r.resource} is being encrypted ({r.on_write} of {r.total} values on "
                       f"{r.write}, {r.pending} to go)" for r in left)
    return cond("False", "EncryptionInProgress", detail)
