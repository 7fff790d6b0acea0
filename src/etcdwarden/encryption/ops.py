"""enable / disable / rotate / migrate: plan the configuration phases, write them, migrate, prune.

Before anything is written, every stored value of the selected resources is decrypted with the
configuration about to be deployed (:mod:`.preflight`): a wrong key, undecryptable values or values
aescbc cannot check stop the operation with no file changed.

The EncryptionConfiguration file given by the caller is the source of truth and is kept up to date:
each phase is written to it (0600, atomically) before the next step; a phase that cannot be written
or rolled out puts the previous configuration back in every file it touched (atomically). The
operation is recorded in a journal (:mod:`.journal`), so that a rerun after a kill or a failure
finishes it with the same new key instead of minting another. Between phases every
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
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdwarden.encryption.backup_keys import BackupSource, keys_needed_by_backups
from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.encryption.journal import RUNNING, Journal, journal_path
from etcdwarden.encryption.migrate import MigrationReport, Migrator
from etcdwarden.encryption.plan import Phase, plan_disable, plan_enable, plan_prune, plan_rotate
from etcdwarden.encryption.preflight import preflight
from etcdwarden.encryption.resources import Resource
from etcdwarden.encryption.rollout import Rollout
from etcdwarden.encryption.state import MigrationState
from etcdwarden.encryption.status import collect
from etcdwarden.errors import EXIT_FAILED, EtcdwardenError, UsageError
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.fsutil import atomic_write, fsync_dir


class PhaseFailed(EtcdwardenError):
    """A configuration phase could not be written or rolled out; the previous configuration was put back."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Options:
    dry_run: bool = False
    state_path: Path | None = None
    page_size: int = 1000
    batch_ops: int = 128
    concurrency: int = 8
    skip_unreadable: bool = False
    allow_non_kubernetes: bool = False  # --force=non-kubernetes (see preflight.py)
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


def _plan(operation: str, cfg: EncryptionConfiguration | None, config_path: Path, names: list[str], ptype: str,
          key_name: str | None, res: OpResult) -> list[Phase]:
    phases: list[Phase] = []
    if operation == "enable":
        phases, res.new_key = plan_enable(cfg, names, ptype, key_name)
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
        phases, res.new_key = plan_rotate(cfg, names, key_name)
    elif operation == "migrate":
        if cfg is None:
            raise UsageError(f"{config_path}: EncryptionConfiguration file not found")
    else:
        raise UsageError(f"unknown operation {operation!r}")
    return phases


async def run_operation(client: EtcdClient, operation: str, config_path: Path, resources: Sequence[Resource],
                        opts: Options, ptype: str = "aescbc",
                        notify: Callable[[str], None] = lambda _m: None) -> OpResult:
    names = [r.name for r in resources]
    cfg = load_optional(config_path)
    res = OpResult(operation, str(config_path), opts.dry_run)
    provider = ptype if operation == "enable" else None
    journal = Journal.load(journal_path(config_path)) if operation != "migrate" else None
    resuming = journal is not None and journal.resumes(operation, names, provider)
    if journal is not None and resuming:
        res.notes.append(f"finishing the interrupted {operation} recorded in {journal.path}"
                         + (f" (key {journal.new_key})" if journal.new_key else ""))
        notify(res.notes[-1])
    elif journal is not None and journal.status == RUNNING:
        res.notes.append(f"the interrupted {journal.operation} of {', '.join(journal.resources)} recorded in "
                         f"{journal.path} is not continued by this {operation}")
        notify(res.notes[-1])
    phases = _plan(operation, cfg, config_path, names, ptype, journal.new_key if resuming and journal else None, res)
    if resuming and journal is not None and not res.new_key:
        res.new_key = journal.new_key
    target = phases[-1].config if phases else cfg
    assert target is not None

    # prove the configuration on what is stored before any file or value is written
    seen, notes = await preflight(client, target, resources, source=str(config_path),
                                  skip_unreadable=opts.skip_unreadable,
                                  allow_non_kubernetes=opts.allow_non_kubernetes, page_size=opts.page_size)
    notify(f"checked {sum(r.total for r in seen.resources)} stored value(s) against the "
           f"{'planned ' if phases else ''}configuration by decrypting them")
    res.notes += notes
    rollout = opts.rollout if opts.rollout is not None and opts.rollout.active else None
    pruning = opts.prune and operation in ("rotate", "disable")
    if pruning and opts.backups:  # fail before any change when a repository cannot be read
        await asyncio.to_thread(keys_needed_by_backups, opts.backups)

    if phases and not opts.dry_run:
        if journal is None or not resuming:
            journal = Journal(journal_path(config_path), operation, names, res.new_key, provider)
        journal.status = RUNNING
        journal.save()
    for ph in phases:
        res.phases.append(f"{ph.name}: {ph.description}")
        if opts.dry_run:
            notify(f"{ph.name} (dry run, not written): {ph.description}")
        else:
            await _apply(ph, config_path, rollout, notify)
    cfg = target

    targets = Migrator.targets_for(cfg, resources)
    state_path = None if opts.dry_run else (opts.state_path or default_state_path(config_path))
    state = MigrationState.load(state_path, targets)
    if state.resumed:
        notify(f"resuming the migration recorded in {state_path}")
    mig = Migrator(client, cfg, resources, page_size=opts.page_size, batch_ops=opts.batch_ops,
                   concurrency=opts.concurrency, dry_run=opts.dry_run, state=state,
                   skip_unreadable=opts.skip_unreadable, check_plaintext=not opts.allow_non_kubernetes,
                   rate_limit=opts.rate_limit)
    res.migration = await mig.run()

    if operation in ("rotate", "disable") and not await _prune(client, cfg, config_path, resources, opts, res,
                                                                rollout, targets, notify):
        return res
    if journal is not None and (resuming or phases) and res.migration.complete and not opts.dry_run:
        journal.finish()
    return res


async def _prune(client: EtcdClient, cfg: EncryptionConfiguration, config_path: Path, resources: Sequence[Resource],
                 opts: Options, res: OpResult, rollout: Rollout | None, targets: dict[str, str],
                 notify: Callable[[str], None]) -> bool:
    """Drop the keys nothing needs any more (with ``--prune``); False when the operation must stop here."""
    assert res.migration is not None
    names = [r.name for r in resources]
    if not opts.prune:
        res.notes.append("old keys were kept as read-only keys: backups taken before this change still need "
                         "them. Remove them with --prune once no backup you may restore uses them")
        return True
    if not res.migration.complete and not opts.dry_run:
        res.notes.append("not pruning: the migration did not complete")
        return True
    if opts.dry_run:
        in_use = {r.name: {targets[r.name]} for r in resources}
    else:
        st = await collect(client, cfg, resources, opts.page_size)
        if st.unreadable:
            res.notes.append(f"not pruning: {st.unreadable} stored value(s) cannot be decrypted")
            return True
        in_use = {s.resource: set(s.by_label) for s in st.resources}
    needed: dict[str, list[str]] | None = None
    if opts.backups:
        try:
            needed = await asyncio.to_thread(keys_needed_by_backups, opts.backups)
        except EtcdwardenError as e:
            res.notes.append(f"not pruning: {e}")
            return False
    phase, notes = plan_prune(cfg, names, in_use, needed)
    res.notes += notes
    if phase is not None:
        res.pruned = phase.description
        if not opts.dry_run:
            await _apply(phase, config_path, rollout, notify,
                         "the migration is complete, but the pruned configuration was not loaded by every "
                         "apiserver")
        res.notes.append("pruned keys are gone from the configuration: backups that still need them "
                         "can no longer be read with this file")
    return True


def _snapshot(paths: Sequence[Path]) -> dict[Path, tuple[bytes, int] | None]:
    """The bytes and mode of each file (None: absent), to put back if a phase fails."""
    out: dict[Path, tuple[bytes, int] | None] = {}
    for p in paths:
        try:
            out[p] = (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        except FileNotFoundError:
            out[p] = None
        except OSError as e:
            raise EtcdwardenError(f"cannot read {p}: {e.strerror or e}; nothing was changed") from None
    return out


def _put_back(before: dict[Path, tuple[bytes, int] | None]) -> list[str]:
    """Write every file back as it was (atomically); a file that did not exist is removed. Returns failures."""
    failed: list[str] = []
    for path, was in before.items():
        try:
            if was is None:
                if path.exists():
                    path.unlink()
                    fsync_dir(path.parent)
            else:
                atomic_write(path, was[0], mode=was[1])
        except (OSError, EtcdwardenError) as e:
            failed.append(f"{path}: {getattr(e, 'strerror', None) or e}")
    return failed


async def _apply(phase: Phase, config_path: Path, rollout: Rollout | None, notify: Callable[[str], None],
                 consequence: str = "stopped before the next step, nothing was migrated") -> None:
    """Write ``phase`` (and roll it out); if that fails, put the previous configuration back everywhere."""
    files = [config_path, *(Path(p) for p in (rollout.configs if rollout is not None else ()))]
    before = _snapshot(files)
    try:
        digest = phase.config.save(config_path)
        notify(f"{phase.name}: {phase.description}; wrote {config_path} ({digest})")
        if rollout is not None:
            await _roll_out(rollout, phase, digest, notify, consequence)
    except (EtcdwardenError, OSError) as e:
        failed = _put_back(before)
        where = f"{config_path}" + (f" and {len(files) - 1} apiserver configuration file(s)" if len(files) > 1 else "")
        if failed:
            raise EtcdwardenError(f"{e}; putting the previous configuration back failed too ({'; '.join(failed)}): "
                                  f"check {where} by hand before rerunning") from None
        notify(f"{phase.name}: failed; put the previous configuration back in {where}")
        raise PhaseFailed(f"{e}; the previous configuration was put back in {where}; rerun to finish",
                          getattr(e, "exit_code", EXIT_FAILED)) from None


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
