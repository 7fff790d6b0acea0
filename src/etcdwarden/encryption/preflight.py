"""Prove the configuration on what is stored, before anything is written.

Every operation that changes something (enable, disable, rotate, migrate) first reads and decrypts
*every* value of the selected resources with the read path of the configuration it is about to
deploy (:func:`~etcdwarden.encryption.status.collect`), and refuses before writing any file or value:

* a key that fails on at least as many values as it proves is a wrong (or missing) key: exit 1, even
  with ``--skip-unreadable`` (that flag is for a few damaged values, not for a wrong configuration);
* values that cannot be decrypted at all (corrupt, a key missing, KMS): exit 1 unless
  ``--skip-unreadable`` (they are then left as they are and the migration reports itself incomplete);
* values that are not Kubernetes objects and would be written with, or read back from, aescbc: exit
  3 unless ``--force=non-kubernetes``. AES-CBC is unauthenticated; etcdwarden trusts an aescbc
  decryption only when it yields a Kubernetes object (:mod:`.plaintext`), so such a value, once
  encrypted, could not be told apart from a wrong key on the way back. Refusing up front keeps
  ``enable`` and ``disable`` symmetric: whatever one encrypts, the other decrypts (with the same flag).
"""

from __future__ import annotations

from collections.abc import Sequence

from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.encryption.migrate import MigrationError
from etcdwarden.encryption.resources import Resource
from etcdwarden.encryption.status import EncryptionStatus, LabelProof, collect
from etcdwarden.errors import SafetyRefusal
from etcdwarden.etcd.client import EtcdClient

FORCE_NON_KUBERNETES = "non-kubernetes"
NOTHING_WRITTEN = "nothing was written and no file was changed"
_LIST = 10


def _listed(items: Sequence[str], total: int) -> str:
    shown = "; ".join(items[:_LIST])
    return shown + (f"; and {total - min(len(items), _LIST)} more" if total > min(len(items), _LIST) else "")


def check(st: EncryptionStatus, *, source: str, skip_unreadable: bool = False,
          allow_non_kubernetes: bool = False) -> list[str]:
    """Raise when ``st`` shows the configuration cannot be trusted; else notes about what is tolerated."""
    wrong: dict[str, list[tuple[str, LabelProof]]] = {}
    for r in st.resources:
        for label, p in r.wrong_keys().items():
            wrong.setdefault(label, []).append((r.resource, p))
    if wrong:
        parts = []
        for label, per in wrong.items():
            good = sum(p.trusted for _, p in per)
            seen = sum(p.trusted + p.unproven + p.failed for _, p in per)
            first = per[0][1]
            parts.append(f"{label} decrypted {good} of {seen} values of {', '.join(n for n, _ in per)} "
                         f"(e.g. {first.first_failure}: {first.reasons.most_common(1)[0][0]})")
        raise MigrationError(
            f"the keys in {source} do not decrypt what is stored: {'; '.join(parts)}. A wrong key (the right name "
            f"with another secret?) or a key missing from the configuration; {NOTHING_WRITTEN}. Fix the "
            "EncryptionConfiguration (--skip-unreadable does not skip a key that fails on most of its values)")
    notes: list[str] = []
    bad = [r for r in st.resources if r.unreadable or r.unverifiable]
    if bad:
        total = sum(r.unreadable + r.unverifiable for r in bad)
        problems = [p for r in bad for p in r.problems]
        if not skip_unreadable:
            raise MigrationError(
                f"{total} stored value(s) cannot be decrypted with {source}: {_listed(problems, total)}. "
                f"{NOTHING_WRITTEN.capitalize()}. Fix the key in the EncryptionConfiguration, or pass "
                "--skip-unreadable to leave such values as they are")
        notes.append(f"{total} value(s) cannot be decrypted and will be left as they are (--skip-unreadable)")
    odd = [r for r in st.resources if r.non_kubernetes]
    if odd:
        total = sum(r.non_kubernetes for r in odd)
        keys = [k for r in odd for k in r.non_kubernetes_keys]
        if not allow_non_kubernetes:
            raise SafetyRefusal(
                f"{total} stored value(s) are not Kubernetes objects and would be encrypted with, or decrypted "
                f"from, aescbc: {_listed(keys, total)}. AES-CBC is unauthenticated: etcdwarden checks a "
                "decryption by the plaintext being a Kubernetes object (protobuf, JSON or CBOR), so these "
                "values could not be told apart from a wrong key when they are read back (if they were "
                f"encrypted by 'enable --force=non-kubernetes', that flag is needed again); {NOTHING_WRITTEN}. "
                "Leave them out (--resources), use --type aesgcm or secretbox (authenticated), or accept them",
                force_flag=f"--force={FORCE_NON_KUBERNETES}")
        notes.append(f"{total} value(s) that are not Kubernetes objects are rewritten with aescbc or from it "
                     f"(--force={FORCE_NON_KUBERNETES}); the same flag is needed to rotate or disable later")
    return notes


async def preflight(client: EtcdClient, cfg: EncryptionConfiguration, resources: Sequence[Resource], *,
                    source: str, skip_unreadable: bool = False, allow_non_kubernetes: bool = False,
                    page_size: int = 1000) -> tuple[EncryptionStatus, list[str]]:
    """Decrypt every stored value of ``resources`` with ``cfg``; raise before any write if it cannot be trusted."""
    st = await collect(client, cfg, resources, page_size)
    notes = check(st, source=source, skip_unreadable=skip_unreadable, allow_non_kubernetes=allow_non_kubernetes)
    return st, notes
