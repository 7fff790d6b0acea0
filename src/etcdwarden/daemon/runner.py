"""What the daemon calls to do the work: the :class:`JobRunner` protocol and its default implementation.

The daemon only schedules, elects and records; a runner performs. :class:`DefaultRunner` backs up with
:func:`etcdwarden.backup.run.take_backup` into a repository (a directory, ``file://``, ``s3://``, ``gs://``,
``az://``), lists it through the one catalog reader (:func:`etcdwarden.repository.reverify.read_catalog`),
and calls the optional libraries lazily:

* retention: :mod:`etcdwarden.repository` (``DefaultRunner.prune``);
* defragmentation: :func:`etcdwarden.defrag.rolling_defrag` (``DefaultRunner.defrag``);
* encryption key rotation: :func:`etcdwarden.encryption.ops.run_operation` (``DefaultRunner.rotate``).

``rotate`` is a separate protocol (:class:`RotationRunner`) so runners written before it still satisfy
:class:`JobRunner`; the executor reports a rotation job as failed when its runner has no ``rotate``.

A missing library is a :class:`RunnerUnavailable` error naming it, never a crash of the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from etcdwarden.daemon.config import DAEMON_SETTINGS, Repository
from etcdwarden.daemon.spec import BackupJob, DaemonConfig, DefragSpec, DrillSpec, RotationSpec
from etcdwarden.errors import EtcdwardenError, SafetyRefusal
from etcdwarden.etcd.client import EtcdClient

if TYPE_CHECKING:
    from etcdwarden.daemon.drills import DrillJobOutcome
    from etcdwarden.repository.retention.base import Names

log = logging.getLogger(__name__)


class RunnerUnavailable(EtcdwardenError):
    """A capability the job needs is not available in this build or for this repository."""


@dataclass
class JobOutcome:
    """A finished backup."""

    ok: bool
    repository: str
    location: str = ""  # where the backup is (manifest path or URL)
    size: int = 0  # bytes written (every file of the backup)
    revision: int | None = None
    manifest: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class PruneOutcome:
    ok: bool
    deleted: list[str] = field(default_factory=list)
    kept: int = 0
    error: str | None = None
    corrupt: dict[str, str] = field(default_factory=dict)  # backup ID -> what does not match its manifest
    reasons: dict[str, str] = field(default_factory=dict)  # deleted ID -> why (naming the job's settings)


@dataclass
class DefragOutcome:
    ok: bool
    defragmented: int = 0  # members actually defragmented
    skipped: int = 0  # members the rule left alone
    report: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class RotationOutcome:
    ok: bool
    new_key: str | None = None
    rewritten: int = 0
    pruned: str | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None


class JobRunner(Protocol):
    async def backup(self, job: BackupJob) -> JobOutcome: ...

    async def prune(self, job: BackupJob) -> PruneOutcome: ...

    async def catalog(self, repository: str) -> list[dict[str, Any]]: ...

    async def defrag(self, job: DefragSpec) -> DefragOutcome: ...


class RotationRunner(Protocol):
    async def rotate(self, job: RotationSpec) -> RotationOutcome: ...


class DrillRunner(Protocol):
    async def drill(self, job: DrillSpec) -> DrillJobOutcome: ...


class BackupProbe(Protocol):
    async def complete_backups(self, job: BackupJob) -> int:
        """How many complete backups of this cluster the job's repository holds (a first start runs a backup
        at once only when there is none; see :meth:`etcdwarden.daemon.jobs.JobExecutor.adopt`)."""
        ...


class DefaultRunner:
    """Backs up into repositories; retention and defrag through the libraries, loaded lazily."""

    def __init__(self, client: EtcdClient, config: DaemonConfig) -> None:
        self.client = client
        self.config = config

    def _repo(self, name: str) -> Repository:
        repo = self.config.repositories.get(name)
        if repo is None:
            raise RunnerUnavailable(f"unknown repository {name!r}")
        return repo

    def _options(self, name: str) -> Any:
        from etcdwarden.repository.base import RepositoryOptions

        return RepositoryOptions.from_mapping(self._repo(name).backend_options())

    def _store(self, name: str) -> Any:
        from etcdwarden.repository.base import open_repository

        return open_repository(self._repo(name).url, self._options(name))

    async def backup(self, job: BackupJob) -> JobOutcome:
        from etcdwarden.backup.run import BackupOptions, take_backup

        repo = self._repo(job.repository)
        s = job.settings
        opts = BackupOptions(
            directory=repo.url,
            resources=[Path(p) for p in s.resources],
            resources_dir=Path(s.resources_dir) if s.resources_dir else None,
            compress=s.compress,
            recipients=list(s.encrypt_to),
            member=s.member,
            release=s.release,
            verify=s.verify,
            encryption_config=Path(s.encryption_config) if s.encryption_config else None,
            repository_options=self._options(job.repository),
        )
        result = await take_backup(self.client, opts)
        m = result.manifest
        size = sum(int(f.get("size", 0)) for f in (m.get("files") or {}).values())
        if m.get("resources") and m["resources"].get("file") not in (m.get("files") or {}):
            size += int(m["resources"].get("size", 0))
        return JobOutcome(ok=True, repository=repo.name, location=result.location or str(result.manifest_path),
                          size=size, revision=int(m["revision"]) if m.get("revision") is not None else None,
                          manifest=m, warnings=list(result.warnings))

    async def prune(self, job: BackupJob) -> PruneOutcome:
        """Apply ``job.retention`` to ``job.repository`` (only ever after a verified backup)."""
        if job.retention is None:
            return PruneOutcome(ok=True)
        import datetime as dt

        from etcdwarden.repository.prune import prune
        from etcdwarden.repository.retention.floor import MinKeep
        from etcdwarden.repository.retention.incomplete import IncompleteCleanup
        from etcdwarden.repository.retention.number import RetentionNumber
        from etcdwarden.repository.retention.plan import RetentionConfig
        from etcdwarden.repository.retention.proven import KeepProven
        from etcdwarden.repository.retention.size import RetentionSize
        from etcdwarden.repository.retention.tiered import Tiered
        from etcdwarden.repository.retention.within import KeepWithin
        from etcdwarden.repository.reverify import VerifyPolicy

        r = job.retention
        cap = r.size_cap
        cfg = RetentionConfig(
            number=RetentionNumber(r.keep_last) if r.keep_last is not None else None,
            size=RetentionSize.of_bytes(cap) if cap is not None else None,
            within=KeepWithin(dt.timedelta(seconds=r.keep_within)) if r.keep_within is not None else None,
            tiered=Tiered(r.tiers.hourly, r.tiers.daily, r.tiers.weekly, r.tiers.monthly) if r.tiers else None,
            min_keep=MinKeep(r.min_keep) if r.min_keep >= 1 else None,
            keep_proven=KeepProven(r.keep_proven) if r.keep_proven >= 1 else None,
            incomplete=IncompleteCleanup(dt.timedelta(seconds=r.incomplete_grace)),
            names=retention_names(job),
        )
        policy = VerifyPolicy(dt.timedelta(seconds=r.reverify_after), r.max_verify_bytes, setting="maxVerifyBytes")
        store = self._store(job.repository)
        try:
            res = await asyncio.to_thread(prune, store, cfg, verify=policy)
        finally:
            store.close()
        # a corrupt backup fails the retention run (it is kept, not counted, and must be looked at)
        return PruneOutcome(ok=not res.corrupt, deleted=list(res.deleted), kept=len(res.plan.keep),
                            error="; ".join(res.plan.alerts) or None, corrupt=dict(res.corrupt),
                            reasons={i: res.plan.delete[i] for i in res.deleted if i in res.plan.delete})

    async def complete_backups(self, job: BackupJob) -> int:
        """Complete backups of this cluster (its ID from etcd) in the job's repository."""
        from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
        from etcdwarden.repository.catalog import load_catalog

        resp = await self.client.range(pb.RangeRequest(key=self.config.election.prefix.encode(), count_only=True))
        cluster = f"{resp.header.cluster_id:x}"
        store = self._store(job.repository)
        try:
            cat = await asyncio.to_thread(load_catalog, store)
        finally:
            store.close()
        return sum(1 for e in cat.good if e.cluster_id == cluster)

    async def catalog(self, repository: str) -> list[dict[str, Any]]:
        """The backups of a repository, newest first (complete, unverified and incomplete ones)."""
        from etcdwarden.repository.reverify import read_catalog

        store = self._store(repository)
        try:
            # corrupt: found by an earlier re-hash, file unchanged since
            cat = await asyncio.to_thread(read_catalog, store)
            out: list[dict[str, Any]] = []
            for e in reversed(cat.entries):
                d = e.as_json(store)
                out.append({"repository": repository, "id": e.id, "state": e.state, "createdAt": d["time"],
                            "clusterId": d["cluster_id"], "member": e.member, "revision": e.revision,
                            "dbSize": d["db_size"], "size": e.size, "files": e.data_files(),
                            "verified": e.verified, "manifest": d["where"], "proven": d["proven"],
                            "drill": d["drill"]})
            return out
        finally:
            store.close()

    async def defrag(self, job: DefragSpec) -> DefragOutcome:
        """A rolling defragmentation (followers first, the leader last) of the members the rule selects."""
        try:
            from etcdwarden.defrag import DefragOptions, compile_rule, rolling_defrag
        except ImportError:
            raise RunnerUnavailable("defragmentation is not available: etcdwarden.defrag is missing") from None
        o = job.options
        opts = DefragOptions(
            cluster=True,
            rule=compile_rule(o.rule) if o.rule else None,
            compact=o.compact,
            move_leader=o.move_leader,
            wait=o.wait,
            defrag_timeout=o.defrag_timeout,
            recover_timeout=o.recover_timeout,
            continue_on_error=o.continue_on_error,
            db_quota_bytes=o.db_quota_bytes,
            on_event=lambda ev: log.info("defrag %s: %s %s", job.name, ev.kind, ev.message),
            setting_names=DAEMON_SETTINGS,
        )
        report = await rolling_defrag(self.client, opts)
        doc = report.as_json()
        done = sum(1 for m in report.members if m.outcome.value == "defragmented")
        skipped = sum(1 for m in report.members if m.outcome.value == "skipped")
        return DefragOutcome(ok=report.ok, defragmented=done, skipped=skipped, report=doc,
                             error=None if report.ok else (report.stopped_reason or "a member failed"))

    async def rotate(self, job: RotationSpec) -> RotationOutcome:
        """Rotate the encryption-at-rest key as ``etcdwarden encryption rotate`` does (see ``job.options``)."""
        return await rotate_keys(self.client, job, self.config, self._options)

    async def drill(self, job: DrillSpec) -> DrillJobOutcome:
        """Restore drills of the backups ``job`` selects (:mod:`etcdwarden.daemon.drills`)."""
        from etcdwarden.daemon.drills import run_drill_job

        name = job.repository
        return await run_drill_job(job, self._repo(name).url, self._options(name))


async def rotate_keys(client: EtcdClient, job: RotationSpec, config: DaemonConfig,
                      repo_options: Any = None) -> RotationOutcome:
    """The default rotation: new key read-only, promoted, migrate, prune only what no kept backup needs."""
    from etcdwarden.encryption.backup_keys import BackupSource
    from etcdwarden.encryption.ops import Options, run_operation
    from etcdwarden.encryption.preflight import FORCE_NON_KUBERNETES
    from etcdwarden.encryption.resources import LAYOUTS, select
    from etcdwarden.encryption.rollout import Rollout

    o = job.options
    layouts = list(LAYOUTS) if o.layout == "all" else [o.layout]
    resources = select(list(o.resources) or None, layouts, [])
    sources = []
    for name in o.backups:
        repo = config.repositories.get(name)
        if repo is None:
            raise RunnerUnavailable(f"unknown repository {name!r}")
        sources.append(BackupSource(repo.url, repo_options(name) if repo_options is not None else None))
    rollout = Rollout(configs=[Path(p) for p in o.apiserver_configs], metrics=list(o.apiserver_metrics),
                      timeout=o.rollout_timeout, cacert=Path(o.apiserver_cacert) if o.apiserver_cacert else None,
                      token_file=Path(o.apiserver_token_file) if o.apiserver_token_file else None)
    opts = Options(prune=o.prune, rollout=rollout, backups=sources, allow_non_kubernetes=o.allow_non_kubernetes)
    try:
        res = await run_operation(client, "rotate", Path(o.config), resources, opts,
                                  notify=lambda m: log.info("rotation %s: %s", job.name, m))
    except SafetyRefusal as e:
        if e.force_flag != f"--force={FORCE_NON_KUBERNETES}":
            raise
        message = str(e).replace(f"(override with {e.force_flag} if you are sure)",
                                 "(set encryptionRotation.allowNonKubernetes: true if you are sure)")
        raise SafetyRefusal(message, force_flag=None) from None
    mig = res.migration
    out = RotationOutcome(ok=True, new_key=res.new_key, rewritten=mig.rewritten if mig else 0, pruned=res.pruned,
                          notes=list(res.notes))
    if mig is not None and not mig.complete:
        out.ok = False
        out.error = "the migration is not complete: " + ("; ".join(mig.problems[:3]) or "values kept changing")
    return out


def retention_names(job: BackupJob) -> Names:
    """What retention messages call the settings: the job's configuration keys (those of a Backup CR)."""
    from etcdwarden.repository.retention.base import Names

    if job.from_cr:
        return Names(max_number="retentionNumber.maxNumberOfBackups", max_size="retentionSize.maxSizeOfBackupsGb")
    size = job.retention.size_key if job.retention is not None else "maxSizeGiB"
    return Names(max_number="keepLast", max_size=size, keep_within="keepWithin", tier="tiers.{tier}",
                 min_keep="minKeep", keep_proven="keepProven", incomplete_grace="incompleteGrace")


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
