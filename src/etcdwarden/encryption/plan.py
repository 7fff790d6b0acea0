"""The EncryptionConfiguration changes behind enable, disable, rotate and prune.

Each operation is a list of :class:`Phase` s, each a complete configuration to deploy in turn
(encryption.md §3.3): first the new key (or identity) is added as a *reader* (phase ``add-key``), then
made the *writer* (phase ``promote``); migration follows; old keys are removed only by ``prune``.
Only the entries (``resources[i]``) that name a selected resource explicitly are changed; selected
resources with no entry get a new one at the top (``[identity]``, i.e. what kube-apiserver assumes).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from etcdwarden.encryption.config import EncryptionConfiguration, Key, ProviderConfig, ResourceConfig
from etcdwarden.encryption.keys import generate_key, unique_key_name
from etcdwarden.encryption.providers import KEYED_PROVIDERS
from etcdwarden.errors import UsageError


@dataclass
class Phase:
    name: str  # add-key | promote | prune
    description: str
    config: EncryptionConfiguration


def _rules(cfg: EncryptionConfiguration, names: Sequence[str], create: bool) -> list[ResourceConfig]:
    """The entries that list ``names`` explicitly (creating one for the unlisted ones if ``create``)."""
    rules: list[ResourceConfig] = []
    missing: list[str] = []
    for name in names:
        rc = next((rc for rc in cfg.resources if name in rc.resources), None)
        if rc is None:
            covering = cfg.rule_for(name)
            if covering is not None:
                wild = [r for r in covering.resources if r.startswith("*")]
                raise UsageError(f"resource {name} is covered by the wildcard entry {wild}; etcdwarden manages "
                                 "explicit per-resource entries: list it explicitly before the wildcard")
            missing.append(name)
        elif all(rc is not r for r in rules):
            rules.append(rc)
    if missing and create:
        rc = ResourceConfig(missing, [ProviderConfig("identity")])
        cfg.resources.insert(0, rc)
        rules.insert(0, rc)
    return rules


def _names(rules: Sequence[ResourceConfig]) -> str:
    return ", ".join(n for rc in rules for n in rc.resources)


def plan_enable(cfg: EncryptionConfiguration | None, names: Sequence[str], ptype: str,
                key_name: str | None = None) -> tuple[list[Phase], str]:
    """Make ``ptype`` with a new key the write provider; returns the phases and the new key's name.

    With ``key_name`` (an interrupted enable being finished) that key is reused where the configuration
    already has it, so a rerun only does the phases that are left.
    """
    if ptype not in KEYED_PROVIDERS:
        raise UsageError(f"--type must be one of {', '.join(KEYED_PROVIDERS)}, not {ptype!r}")
    work = copy.deepcopy(cfg) if cfg else EncryptionConfiguration()
    rules = [rc for rc in _rules(work, names, create=True) if rc.providers[0].type != ptype]
    key = Key(key_name or unique_key_name(work.key_names()), generate_key(ptype))
    if not rules:
        return [], ""
    added = False
    for rc in rules:
        target = next((p for p in rc.providers if p.type == ptype), None)
        if target is None:
            target = ProviderConfig(ptype, [])
            rc.providers.append(target)
        if all(k.name != key.name for k in target.keys):
            target.keys.append(copy.deepcopy(key))
            added = True
        if not any(p.type == "identity" for p in rc.providers):
            rc.providers.append(ProviderConfig("identity"))
            added = True
    phases: list[Phase] = []
    if added:
        phases.append(Phase("add-key", f"add {ptype} key {key.name} as a read-only key for {_names(rules)}",
                            copy.deepcopy(work)))
    for rc in rules:
        _promote(rc, ptype, key.name)
    phases.append(Phase("promote", f"make {ptype} key {key.name} the write key for {_names(rules)}", work))
    return phases, key.name


def _promote(rc: ResourceConfig, ptype: str, key_name: str | None) -> None:
    idx = next(i for i, p in enumerate(rc.providers) if p.type == ptype)
    prov = rc.providers.pop(idx)
    if key_name is not None:
        prov.keys.sort(key=lambda k: k.name != key_name)  # stable: the new key first, others keep order
    rc.providers.insert(0, prov)


def plan_disable(cfg: EncryptionConfiguration | None, names: Sequence[str]) -> list[Phase]:
    """Make identity the write provider (old providers stay as readers)."""
    if cfg is None:
        return []
    work = copy.deepcopy(cfg)
    rules = [rc for rc in _rules(work, names, create=False) if rc.providers[0].type != "identity"]
    if not rules:
        return []
    phases: list[Phase] = []
    if any(all(p.type != "identity" for p in rc.providers) for rc in rules):
        for rc in rules:
            if all(p.type != "identity" for p in rc.providers):
                rc.providers.append(ProviderConfig("identity"))
        phases.append(Phase("add-key", f"add identity as a reader for {_names(rules)}", copy.deepcopy(work)))
    for rc in rules:
        _promote(rc, "identity", None)
    phases.append(Phase("promote", f"make identity (no encryption) the write provider for {_names(rules)}", work))
    return phases


def plan_rotate(cfg: EncryptionConfiguration | None, names: Sequence[str],
                key_name: str | None = None) -> tuple[list[Phase], str]:
    """A new key for the current write provider: added last (read-only), then moved first.

    With ``key_name`` (an interrupted rotation being finished) that key is added only where it is
    missing and promoted only where it is not first yet: a rerun never mints another key.
    """
    if cfg is None:
        raise UsageError("encryption is not enabled (no EncryptionConfiguration); use 'encryption enable'")
    work = copy.deepcopy(cfg)
    rules = _rules(work, names, create=False)
    for name in names:
        rc = next((r for r in rules if name in r.resources), None)
        if rc is None or rc.providers[0].type not in KEYED_PROVIDERS:
            what = rc.providers[0].label() if rc else "identity"
            raise UsageError(f"cannot rotate {name}: its write provider is {what}, not aescbc/aesgcm/secretbox; "
                             "use 'encryption enable' first")
    new_name = key_name or unique_key_name(work.key_names())
    keys = {t: Key(new_name, generate_key(t)) for t in KEYED_PROVIDERS}
    added = [rc for rc in rules if all(k.name != new_name for k in rc.providers[0].keys)]
    for rc in added:
        p0 = rc.providers[0]
        p0.keys.append(copy.deepcopy(keys[p0.type]))
    phases: list[Phase] = []
    if added:
        phases.append(Phase("add-key", f"add key {new_name} as a read-only key for {_names(added)}",
                            copy.deepcopy(work)))
    behind = [rc for rc in rules if rc.providers[0].keys[0].name != new_name]
    for rc in behind:
        rc.providers[0].keys.sort(key=lambda k: k.name != new_name)
    if behind:
        phases.append(Phase("promote", f"make key {new_name} the write key for {_names(behind)}", work))
    return phases, new_name


def plan_prune(cfg: EncryptionConfiguration, names: Sequence[str],
               in_use: Mapping[str, set[str]],
               needed_by_backups: Mapping[str, Sequence[str]] | None = None) -> tuple[Phase | None, list[str]]:
    """Drop read-only keys no stored value uses; ``in_use``: resource → value labels found in etcd.

    Only entries whose every resource was counted are pruned. The write key, identity and KMS providers
    are kept, and so is every key whose name ``needed_by_backups`` (key name → backups whose manifests
    list it) maps to a kept backup. Returns the phase (None if nothing to drop) and notes about what was
    kept and why.
    """
    needed = needed_by_backups or {}
    work = copy.deepcopy(cfg)
    notes: list[str] = []
    dropped: list[str] = []
    for rc in _rules(work, names, create=False):
        uncounted = [r for r in rc.resources if r not in in_use]
        if uncounted:
            notes.append(f"entry for {', '.join(rc.resources)} not pruned: {', '.join(uncounted)} not scanned")
            continue
        used = set().union(*(in_use[r] for r in rc.resources))
        kept: list[ProviderConfig] = []
        for i, p in enumerate(rc.providers):
            if p.type not in KEYED_PROVIDERS:
                kept.append(p)
                continue
            keep_keys = []
            for j, k in enumerate(p.keys):
                label = f"{p.type}/{k.name}"
                if (i == 0 and j == 0) or label in used:
                    keep_keys.append(k)
                    if label in used and not (i == 0 and j == 0):
                        notes.append(f"kept {label}: values in etcd still use it")
                elif needed.get(k.name):
                    keep_keys.append(k)
                    backups = list(needed[k.name])
                    more = f" and {len(backups) - 3} more" if len(backups) > 3 else ""
                    notes.append(f"kept {label}: backup {', '.join(backups[:3])}{more} still needs it "
                                 "(its manifest lists the key)")
                else:
                    dropped.append(f"{label} ({', '.join(rc.resources)})")
            if keep_keys:
                p.keys = keep_keys
                kept.append(p)
        rc.providers = kept
    if not dropped:
        return None, notes
    return Phase("prune", "remove unused keys: " + "; ".join(dropped), work), notes
