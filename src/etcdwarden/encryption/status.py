"""What is stored where: per-resource counts of values by provider/key, and OpenShift-shaped conditions.

Counting is by prefix only (no key needed), like library-go's e2e ``VerifyResources``. The
``Encrypted`` condition follows library-go's condition controller:

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
from etcdwarden.encryption.providers import classify
from etcdwarden.encryption.resources import Resource
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient, prefix_end


@dataclass
class ResourceStatus:
    resource: str
    write: str  # write provider label, e.g. aescbc/key2 or identity
    total: int = 0
    by_label: Counter[str] = field(default_factory=Counter)

    @property
    def on_write(self) -> int:
        return self.by_label.get(self.write, 0)

    @property
    def pending(self) -> int:
        return self.total - self.on_write

    def to_dict(self) -> dict[str, Any]:
        return {"resource": self.resource, "write": self.write, "total": self.total,
                "on_write_provider": self.on_write, "pending": self.pending,
                "by_provider": dict(sorted(self.by_label.items()))}


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

    def to_dict(self) -> dict[str, Any]:
        return {"conditions": [self.condition.to_dict()], "resources": [r.to_dict() for r in self.resources]}


async def count_values(client: EtcdClient, prefix: bytes, page_size: int = 1000) -> Counter[str]:
    """Counts of stored values under ``prefix`` by provider/key label."""
    counts: Counter[str] = Counter()
    key, end = prefix, prefix_end(prefix)
    while True:
        resp = await client.range(pb.RangeRequest(key=key, range_end=end, limit=page_size))
        for kv in resp.kvs:
            counts[classify(kv.value).label] += 1
        if not resp.more or not resp.kvs:
            return counts
        key = resp.kvs[-1].key + b"\x00"


async def collect(client: EtcdClient, config: EncryptionConfiguration | None,
                  resources: Sequence[Resource]) -> EncryptionStatus:
    cfg = config or EncryptionConfiguration()
    out: list[ResourceStatus] = []
    for r in resources:
        st = ResourceStatus(r.name, cfg.transformer_for(r.name).write_label)
        for p in r.prefixes:
            st.by_label.update(await count_values(client, p))
        st.total = sum(st.by_label.values())
        out.append(st)
    return EncryptionStatus(out, condition(cfg, out))


def condition(cfg: EncryptionConfiguration, resources: Sequence[ResourceStatus]) -> Condition:
    def cond(status: str, reason: str, message: str) -> Condition:
        return Condition("Encrypted", status, reason, message)

    any_keys = any(p.type != "identity" for rc in cfg.resources for p in rc.providers)
    if not any_keys:
        return cond("False", "EncryptionDisabled", "Encryption is not enabled")
    if all(r.write == "identity" for r in resources):
        left = [r for r in resources if r.pending]
        if not left:
            return cond("False", "DecryptionCompleted",
                        "Encryption mode set to identity and everything is decrypted")
        detail = ", ".join(f"{r.resource}: {r.pending} of {r.total} values still encrypted" for r in left)
        return cond("False", "DecryptionInProgress",
                    f"Encryption mode set to identity and decryption is not finished ({detail})")
    for r in resources:
        if r.write == "identity":
            return cond("False", "EncryptionInProgress", f"Resource {r.resource} is not encrypted")
    left = [r for r in resources if r.pending]
    if not left:
        return cond("True", "EncryptionCompleted",
                    "All resources encrypted: " + ", ".join(r.resource for r in resources))
    detail = "; ".join(f"Resource {r.resource} is being encrypted ({r.on_write} of {r.total} values on "
                       f"{r.write}, {r.pending} to go)" for r in left)
    return cond("False", "EncryptionInProgress", detail)
