"""enable / disable / rotate / migrate: plan the configuration phases, write them, migrate, prune.

The EncryptionConfiguration file given by the caller is the source of truth and is kept up to date:
each phase is written to it (0600, atomically) before the next step. Between phases every
kube-apiserver must load the file (encryption.md §3.1); etcdwarden runs the phases back to back, so
with live apiservers run it while they are reloading the file automatically
(``--encryption-provider-config-automatic-reload``) or when they are stopped. ``dry_run`` writes
nothing anywhere: it shows the phases and migrates in dry-run mode with the would-be configuration
(which also proves every value can be decrypted).

With a :class:`~etcdwarden.encryption.rollout.Rollout` every phase is also written to the apiservers'
own configuration files and, where their metrics are given, etcdwarden waits until each apiserver
reports the phase's hash before going on (a timeout stops the operation before the next phase). With
``backups`` (repositories), pruning keeps every key a kept backup's manifest still lists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdwarden.encryption.backup_keys import BackupSource, keys_needed_by_backups
from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.encryption.migrate import MigrationReport, Migrator
from etcdwarden.encryption.plan import Phase, plan_disable, plan_enable, plan_prune, plan_rotate
from etcdwarden.encryption.resources import Resource
from etcdwarden.encryption.rollout import Rollout
from etcdwarden.encryption.state import MigrationState
from etcdwarden.encryption.status import collect
from etcdwarden.errors import EtcdwardenError, UsageError
from etcdwarden.etcd.client import EtcdClient


@dataclass
class Options:
    dry_run: bool = False
    state_path: Path | None = None
    page_size: int = 1000
    batch_ops: int = 128
    concurrency: int = 8
    skip_unreadable: bool = False
    check_plaintext: bool = True
    rate_limit: float | None = None
    prune: bool = False
    rollout: Rollout | None = None
    backups: list[BackupSource] = field(default_factory=list)  # consulted before pruning a key


@dataclass
class OpResult:
    operation: str
    config_path: str
    dry_run: bool
    phases: list[str] = field(default_factory=list)
    new_key: str | None = None
    migration: MigrationReport | None = None
    pruned: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"operation": self.operation, "config": self.config_path, "dry_run": self.dry_run,
                "phases": self.phases, "new_key": self.new_key,
                "migration": self.migration.to_dict() if self.migration else None,
                "pruned": self.pruned, "notes": self.notes}


def default_state_path(config_path: Path) -> Path:
    return config_path.with_name(config_path.name + ".migration-state.json")


def load_optional(path: Path) -> EncryptionConfiguration | None:
    return EncryptionConfiguration.load(path) if path.exists() else None


async def run_operation(client: EtcdClient, operation: str, config_path: Path, resources: Sequence[Resource],
                        opts: Options, ptype: str = "aescbc",
                        notify: Callable[[str], None] = lambda _m: None) -> OpResult:
    names = [r.name for r in resources]
    cfg = load_optional(config_path)
    res = OpResult(operation, str(config_path), opts.dry_run)
    phases: list[Phase] = []
    if operation == "enable":
        phases, res.new_key = plan_enable(cfg, names, ptype)
        if not phases:
            res.notes.append(f"{ptype} is already the write provider for {', '.join(names)}; migrating only")
    elif operation == "disable":
        if cfg is None:
            raise UsageError(f"{config_path}: no EncryptionConfiguration: encryption is not enabled")
        phases = plan_disable(cfg, names)
        if not phases:
            res.notes.append("identity is already the write provider; migrating only")
    elif operation == "rotate":
        if cfg is None:
            raise UsageError(f"{config_path}: no EncryptionConfiguration: use 'encryption enable' first")
        phases, res.new_key = plan_rotate(cfg, names)
    elif operation == "migrate":
        if cfg is None:
            raise UsageError(f"{config_path}: EncryptionConfiguration file not found")
    else:
        raise UsageError(f"unknown operation {operation!r}")

    rollout = opts.rollout if opts.rollout is not None and opts.rollout.active else None
    pruning = opts.prune and operation in ("rotate", "disable")
    if pruning and opts.backups:  # fail before any change when a repository cannot be read
        await asyncio.to_thread(keys_needed_by_backups, opts.backups)

    for ph in phases:
        res.phases.append(f"{ph.name}: {ph.description}")
        if not opts.dry_run:
            digest = ph.config.save(config_path)
            notify(f"{ph.name}: {ph.description}; wrote {config_path} ({digest})")
            if rollout is not None:
                await _roll_out(rollout, ph, digest, notify)
        else:
            notify(f"{ph.name} (dry run, not written): {ph.description}")
        cfg = ph.config
    assert cfg is not None

    targets = Migrator.targets_for(cfg, resources)
    state_path = None if opts.dry_run else (opts.state_path or default_state_path(config_path))
    state = MigrationState.load(state_path, targets)
    if state.resumed:
        notify(f"resuming the migration recorded in {state_path}")
    mig = Migrator(client, cfg, resources, page_size=opts.page_size, batch_ops=opts.batch_ops,
                   concurrency=opts.concurrency, dry_run=opts.dry_run, state=state,
                   skip_unreadable=opts.skip_unreadable, check_plaintext=opts.check_plaintext,
                   rate_limit=opts.rate_limit)
    res.migration = await mig.run()

    if operation in ("rotate", "disable"):
        if not opts.prune:
            res.notes.append("old keys were kept as read-only keys: backups taken before this change still need "
                             "them. Remove them with --prune once no backup you may restore uses them")
        elif not res.migration.complete and not opts.dry_run:
            res.notes.append("not pruning: the migration did not complete")
        else:
            if opts.dry_run:
                in_use = {r.name: {targets[r.name]} for r in resources}
            else:
                st = await collect(client, cfg, resources)
                in_use = {s.resource: set(s.by_label) for s in st.resources}
            needed: dict[str, list[str]] | None = None
            if opts.backups:
                try:
                    needed = await asyncio.to_thread(keys_needed_by_backups, opts.backups)
                except EtcdwardenError as e:
                    res.notes.append(f"not pruning: {e}")
                    return res
            phase, notes = plan_prune(cfg, names, in_use, needed)
            res.notes += notes
            if phase is not None:
                res.pruned = phase.description
                if not opts.dry_run:
                    digest = phase.config.save(config_path)
                    notify(f"prune: {phase.description}; wrote {config_path} ({digest})")
                    if rollout is not None:
                        await _roll_out(rollout, phase, digest, notify,
                                        "the migration is complete and the pruned configuration was written, "
                                        "but not every apiserver has loaded it")
                res.notes.append("pruned keys are gone from the configuration: backups that still need them "
                                 "can no longer be read with this file")
    return res


async def _roll_out(rollout: Rollout, phase: Phase, digest: str, notify: Callable[[str], None],
                    consequence: str = "stopped before the next step, nothing was migrated") -> None:
    """Write ``phase`` to every apiserver configuration file, then wait until each apiserver loaded it."""
    written = rollout.deploy(phase.config)
    if written != digest:  # the same dump everywhere: a difference would be a bug, never go on
        raise EtcdwardenError(f"{phase.name}: the apiserver configuration files differ from the main file")
    if rollout.configs:
        notify(f"{phase.name}: wrote {len(rollout.configs)} apiserver configuration file(s) "
               f"({', '.join(str(p) for p in rollout.configs)})")
    if rollout.metrics:
        notify(f"{phase.name}: waiting up to {rollout.timeout:g}s for {len(rollout.metrics)} apiserver(s) "
               f"to load {digest}")
        await rollout.wait(digest, phase.name, notify, consequence)
