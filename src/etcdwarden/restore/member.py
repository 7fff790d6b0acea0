"""``restore member``: restore one member's data directory from a backup, safely.

Order: remove what a killed run left (decoded copies, its ``.restoring-`` directory); find the backup (in a
directory or any repository URL, :mod:`.source`: a backup in an object store is fetched into a private
staging directory beside ``D``, its sha256 checked on the way down, and removed when the plan is closed);
check the resources bundle, the etcd versions (backup / etcdutl / target etcd), the release, the sha256
trailer, and that ``D`` is not in use (:mod:`.inuse`: a restore under a running etcd is lost); then run
``etcdutl snapshot restore`` into ``D.restoring-<tag>`` *while* the backup is verified (sha256 of every
file, trailer, bbolt structure) in a thread; only when both succeeded is the directory given its owner
and mode 0700, optionally start-checked on a scratch copy, checked once more for ``D`` in use, and
swapped into place (the previous ``D`` becomes ``D.pre-restore-<tag>``). Any failure removes the
half-written ``.restoring-`` directory and leaves ``D`` as it was.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from etcdwarden.binaries import binary_version, find_binary
from etcdwarden.errors import BinaryNotFound, EtcdwardenError, UsageError
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.fsutil import fsync_dir
from etcdwarden.restore import etcdutl as eu
from etcdwarden.restore.backup import (
    Backup,
    SnapshotFacts,
    check_resources,
    check_trailer,
    snapshot_facts,
    verify,
)
from etcdwarden.restore.checks import (
    Forces,
    Owner,
    check_bump,
    check_release,
    check_versions,
    chown_tree,
    default_owner,
    minor,
    parse_owner,
)
from etcdwarden.restore.datadir import (
    aside_dir,
    claim_restoring,
    new_tag,
    release_restoring,
    remove_restoring,
    restoring_dir,
    swap_into_place,
    sweep_restoring,
)
from etcdwarden.restore.inuse import refusal, users
from etcdwarden.snapshot.scratch import existing_dir, sweep
from etcdwarden.snapshot.source import detect_format, open_snapshot

if TYPE_CHECKING:
    from etcdwarden.repository.base import RepositoryOptions
    from etcdwarden.restore.pitr import PointInTime
    from etcdwarden.restore.startcheck import StartCheck

log = logging.getLogger(__name__)

KUBE_RESTART = ("the snapshot holds Kubernetes keys (/registry/, /kubernetes.io/) and the revision is NOT bumped{why}: "
                "restart every kube-apiserver after the restore (their watch caches and clients' informers hold "
                "newer resourceVersions and would silently miss events), then the controllers")


@dataclass
class MemberRestoreOptions:
    backup: Path | str  # a directory, manifest or snapshot file, or a repository URL (s3://, gs://, az://, file://)
    data_dir: Path
    name: str
    initial_cluster: str
    peer_urls: str | None = None
    token: str | None = None
    backup_id: str | None = None
    identity: Path | None = None
    owner: str | None = None
    etcdutl: Path | None = None
    etcd_version: str | None = None
    etcd_binary: Path | None = None
    release: str | None = None
    bump_revision: int = 0
    mark_compacted: bool = False
    verify_start: bool = False
    forces: Forces = field(default_factory=Forces)
    tag: str | None = None
    skip_hash_check: bool = False
    client: ClientConfig | None = None  # TLS for asking the member recorded in the data dir whether it runs
    repository_options: RepositoryOptions | None = None  # how to reach an object store (endpoint, credentials)
    point: PointInTime | None = None  # --to-revision / --to-time (and the scratch member's etcd, progress)
    no_segments: bool = False  # --no-segments: the full backup alone, even when segments follow it


@dataclass
class MemberPlan:
    """What a restore will do; close it (or use ``with``) to remove a fetched backup's staging directory."""

    options: MemberRestoreOptions
    backup: Backup
    etcdutl: eu.Etcdutl
    target_version: str | None
    args: eu.RestoreArgs
    owner: Owner
    tag: str
    warnings: list[str] = field(default_factory=list)
    bump_requested_unsupported: bool = False

    @property
    def data_dir(self) -> Path:
        return self.options.data_dir

    @property
    def work_dir(self) -> Path:
        """Where decoded copies of the snapshot go: a private directory beside the data directory."""
        return existing_dir(self.data_dir.parent)

    @property
    def restoring(self) -> Path:
        return restoring_dir(self.data_dir, self.tag)

    @property
    def aside(self) -> Path | None:
        d = self.data_dir
        return aside_dir(d, self.tag) if d.exists() or d.is_symlink() else None

    @property
    def bump_applied(self) -> bool:
        return self.args.bump_revision > 0

    def command(self, snapshot: str | None = None) -> list[str]:
        snap = snapshot or str(self.backup.snapshot)
        return self.args.command(str(self.etcdutl.path), snap, str(self.restoring))

    def versions_line(self) -> str:
        known = [v for v in (self.backup.server_version, self.etcdutl.version, self.target_version) if v]
        verdict = "same minor version" if len({minor(v) for v in known}) <= 1 else "minor versions differ (forced)"
        return (f"versions: backup etcd {self.backup.server_version or '?'}, etcdutl {self.etcdutl.version}, "
                f"target etcd {self.target_version or '?'}: {verdict}")

    def close(self) -> None:
        self.backup.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def steps(self) -> list[str]:
        fmt = detect_format(self.backup.snapshot)
        out = [self.versions_line()]
        if self.backup.replayed is not None and self.backup.replayed["revisions_to_replay"]:
            r = self.backup.replayed
            out.append(f"done while planning: replayed full backup {r['base']} (revision {r['base_revision']}) and "
                       f"{r['revisions_to_replay']} revisions from {r['segments']} segment(s) up to revision "
                       f"{r['revision']} on a scratch member on 127.0.0.1, snapshotted into a private staging "
                       f"directory in {self.work_dir}")
        elif self.backup.url is not None:
            out.append(f"fetch {self.backup.url} (and the files its manifest lists) into a private (0700) staging "
                       f"directory in {self.work_dir}, size and sha256 checked against the manifest on the way "
                       "down; removed at the end")
        out.append(f"verify {self.backup.label}: sha256 of every file, sha256 trailer, bbolt structure "
                   "(in parallel with the next step)")
        if fmt != "db":
            out.append(f"decode the {fmt} snapshot into a private (0700) directory in {self.work_dir}, removed after")
        out.append(" ".join(self.command("<decoded snapshot>" if fmt != "db" else None)))
        out.append(f"chmod 0700 {self.restoring}; chown -R {self.owner.label} {self.restoring}")
        if self.options.verify_start:
            out.append(f"start a copy of {self.restoring} alone on 127.0.0.1 (--force-new-cluster), compare revision "
                       "and key count with the backup, stop it, remove the copy")
        out.append(f"refuse if {self.data_dir} is in use (a process has it open or holds its lock, or its member "
                   "answers on its URLs), checked again just before the swap")
        if self.aside is not None:
            out.append(f"mv {self.data_dir} {self.aside}   (kept, never deleted)")
        out.append(f"mv {self.restoring} {self.data_dir}")
        return out

    def as_json(self) -> dict[str, Any]:
        return {"backup": self.backup.describe(), "data_dir": str(self.data_dir), "restoring": str(self.restoring),
                "aside": str(self.aside) if self.aside else None, "owner": self.owner.label,
                "etcdutl": {"path": str(self.etcdutl.path), "version": self.etcdutl.version,
                            "supports_bump": self.etcdutl.supports_bump},
                "target_etcd_version": self.target_version, "name": self.args.name,
                "initial_cluster": self.args.initial_cluster, "initial_advertise_peer_urls": self.args.peer_urls,
                "initial_cluster_token": self.args.token, "bump_revision": self.args.bump_revision,
                "steps": self.steps(), "warnings": self.warnings}


@dataclass
class MemberRestoreResult:
    plan: MemberPlan
    aside: Path | None
    facts: SnapshotFacts | None
    start: StartCheck | None
    seconds: float
    warnings: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"data_dir": str(self.plan.data_dir), "moved_aside": str(self.aside) if self.aside else None,
                "owner": self.plan.owner.label, "backup": self.plan.backup.describe(),
                "bump_revision": self.plan.args.bump_revision,
                "keys": self.facts.live_keys if self.facts and self.facts.live_keys >= 0 else None,
                "verify_start": self.start.as_json() if self.start else None,
                "seconds": round(self.seconds, 3), "warnings": self.warnings}


def default_token(backup: Backup) -> str:
    """A new token, the same for every member restored from this backup (so they form one cluster)."""
    if backup.timestamp:
        return f"etcdwarden-restore-{backup.timestamp}"
    return "etcdwarden-restore-" + hashlib.sha256(str(backup.snapshot.resolve()).encode()).hexdigest()[:12]


def peer_urls_of(initial_cluster: str, name: str) -> str:
    try:
        entries = eu.parse_initial_cluster(initial_cluster)
    except ValueError as e:
        raise UsageError(str(e)) from None
    urls = [u for n, u in entries if n == name]
    if not urls:
        raise UsageError(f"--name {name} is not in --initial-cluster {initial_cluster}")
    return ",".join(urls)


def target_etcd_version(version: str | None, binary: Path | None) -> str | None:
    if version:
        return version
    try:
        return binary_version(find_binary("etcd", binary))
    except BinaryNotFound:
        return None


def plan_member_restore(opts: MemberRestoreOptions) -> MemberPlan:
    """Every check that needs no full read of the snapshot; raise on refusal, return the plan (close it when done).

    First of all, decoded (plaintext) snapshot copies a killed run left beside the data directory are removed.
    """
    notes = sweep(existing_dir(opts.data_dir.parent)) + sweep_restoring(opts.data_dir)
    try:
        plan = _plan(opts)
    except BaseException:
        for n in notes:
            log.warning(n)
        raise
    plan.warnings[:0] = notes
    return plan


def _plan(opts: MemberRestoreOptions) -> MemberPlan:
    if opts.bump_revision < 0:
        raise UsageError("--bump-revision must not be negative")
    if (opts.bump_revision > 0) != opts.mark_compacted:
        raise UsageError("--bump-revision N and --mark-compacted go together (etcdutl requires both)")
    # every input is checked before any binary is run (a broken etcdutl must not hide a mistyped flag)
    peer_urls = opts.peer_urls or peer_urls_of(opts.initial_cluster, opts.name)
    owner = parse_owner(opts.owner) if opts.owner else default_owner(opts.data_dir)
    if opts.data_dir.exists() and not opts.data_dir.is_dir():
        raise UsageError(f"--data-dir {opts.data_dir} exists and is not a directory")
    from etcdwarden.restore.pitr import find_restore_backup

    backup = find_restore_backup(opts.backup, opts.backup_id, opts.identity, options=opts.repository_options,
                                 stage_near=existing_dir(opts.data_dir.parent), point=opts.point,
                                 no_segments=opts.no_segments, etcdutl=opts.etcdutl)
    try:
        return _plan_with(opts, backup, peer_urls, owner)
    except BaseException:
        backup.close()
        raise


def _plan_with(opts: MemberRestoreOptions, backup: Backup, peer_urls: str, owner: Owner) -> MemberPlan:
    warnings = list(backup.notes)
    warnings += check_resources(backup, "resources" in opts.forces)
    tool = eu.find_etcdutl(opts.etcdutl)
    warnings += tool.notes
    target = target_etcd_version(opts.etcd_version, opts.etcd_binary)
    warnings += check_versions(backup.server_version, tool.version, target, opts.forces)
    warnings += check_release(backup.release, opts.release, opts.forces)
    bump = opts.bump_revision
    unsupported = False
    if bump and not tool.supports_bump:
        warnings += check_bump(bump, tool.version, False, f" ({tool.path})", opts.forces)  # refuses unless forced
        bump, unsupported = 0, True
    warnings += check_trailer(backup, opts.skip_hash_check)
    args = eu.RestoreArgs(opts.name, opts.initial_cluster, peer_urls, opts.token or default_token(backup), bump,
                          opts.skip_hash_check)
    tag = opts.tag or new_tag()
    plan = MemberPlan(opts, backup, tool, target, args, owner, tag, warnings, unsupported)
    if plan.restoring.exists():
        raise EtcdwardenError(f"{plan.restoring} exists (another restore running?); remove it if it is a leftover")
    plan.warnings += check_in_use(opts)
    return plan


IN_USE_ADVICE = ("Stop the etcd that runs on it first, then rerun: a restore under a running etcd is lost (it keeps "
                 "serving the directory moved aside, and what it acknowledges afterwards vanishes at its next restart)")


def check_in_use(opts: MemberRestoreOptions) -> list[str]:
    """Refuse (``--force=in-use``) a data directory that a process or its member is using."""
    if not opts.data_dir.is_dir():
        return []
    found = asyncio.run(users(opts.data_dir, opts.client))
    return refusal(f"--data-dir {opts.data_dir}", found, opts.forces, IN_USE_ADVICE)


def kubernetes_warning(plan: MemberPlan, facts: SnapshotFacts | None) -> str | None:
    if plan.bump_applied or facts is None or facts.kubernetes_keys <= 0:
        return None
    why = f" (etcdutl {plan.etcdutl.version} cannot bump it)" if plan.bump_requested_unsupported else \
        " (use --bump-revision N --mark-compacted with etcdutl 3.5.10+)" if not plan.etcdutl.supports_bump else \
        " (pass --bump-revision 1000000000 --mark-compacted)"
    return KUBE_RESTART.format(why=why)


def check_contents(plan: MemberPlan) -> SnapshotFacts:
    """The dry-run's verification: the same checks a real run makes, sequentially, nothing written."""
    verify(plan.backup, plan.options.skip_hash_check, plan.work_dir)
    with open_snapshot(plan.backup.snapshot, plan.backup.identity, plan.work_dir) as plain:
        facts = snapshot_facts(plain, stop_at_kubernetes=not plan.options.verify_start)
    w = kubernetes_warning(plan, facts)
    if w:
        plan.warnings.append(w)
    return facts


def restore_member(plan: MemberPlan) -> MemberRestoreResult:
    """Execute ``plan``: restore beside ``D`` while verifying, then swap into place (see module doc)."""
    begin = time.monotonic()
    opts = plan.options
    restoring = plan.restoring
    opts.data_dir.parent.mkdir(parents=True, exist_ok=True)
    facts: SnapshotFacts | None = None
    start: StartCheck | None = None
    claim_restoring(restoring)
    try:
        with open_snapshot(plan.backup.snapshot, plan.backup.identity, plan.work_dir) as plain, \
                concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="restore-verify") as pool:
            verified = pool.submit(verify, plan.backup, opts.skip_hash_check, plan.work_dir)
            counted = pool.submit(snapshot_facts, plain, not opts.verify_start)
            failure: EtcdwardenError | None = None
            try:
                eu.run(plan.command(str(plain)))
            except EtcdwardenError as e:
                failure = e
            finally:
                # wait for the checks whatever happened: nothing may outlive this block
                verified.exception()
                counted.exception()
            verified.result()  # a damaged backup explains an etcdutl failure best: report it first
            if failure is not None:
                raise failure
            facts = counted.result()
        os.chmod(restoring, 0o700)
        chown_tree(restoring, plan.owner)
        fsync_dir(restoring.parent)
        if opts.verify_start:
            from etcdwarden.restore.startcheck import start_check

            # from the snapshot itself (fully scanned for --verify-start): etcd's own rule, see served_revision
            expected_rev = facts.served_revision(plan.args.bump_revision)
            start = start_check(restoring, opts.name, restoring.with_name(f"{restoring.name}.verify"),
                                opts.etcd_binary, expected_rev, facts.live_keys)
            if not start.ok:
                raise EtcdwardenError("the restored member started but does not hold the backup's data: "
                                      + "; ".join(start.problems))
        for again in check_in_use(opts):  # again: an etcd may have been started on it meanwhile
            if again not in plan.warnings:
                plan.warnings.append(again)
        aside = swap_into_place(restoring, opts.data_dir, plan.tag)
    except BaseException:
        if restoring.exists():
            remove_restoring(restoring)
        raise
    finally:
        release_restoring(restoring)
    warnings = list(plan.warnings)
    w = kubernetes_warning(plan, facts)
    if w:
        warnings.append(w)
    return MemberRestoreResult(plan, aside, facts, start, time.monotonic() - begin, warnings)
