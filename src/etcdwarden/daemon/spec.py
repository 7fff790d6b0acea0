"""The resolved daemon configuration: every document merged, every CR mapped to a job."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from etcdwarden.daemon.config import (
    NO_RETRY,
    AgentSection,
    BackupSettings,
    ContinuousSection,
    DefragJob,
    DrillJob,
    ElectionSection,
    EncryptionRotation,
    EtcdSection,
    Repository,
    Retention,
    RetryPolicy,
)
from etcdwarden.daemon.schedule import Schedule


def redact_url(url: str) -> str:
    """``s3://key:secret@host/bucket`` → ``s3://***@host/bucket`` (credentials never shown)."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1***@", url)


@dataclass(frozen=True)
class BackupJob:
    """A scheduled backup (``schedule`` set) or a single backup (``single``: runs once)."""

    name: str
    repository: str
    settings: BackupSettings
    origin: str  # where it was defined: "daemon.yaml: backups[0]" or "Backup etcd-recurring-backup (cr.yaml)"
    schedule: Schedule | None = None
    jitter: float = 0.0
    catch_up: bool = True
    enabled: bool = True
    retention: Retention | None = None
    single: bool = False
    namespace: str | None = None
    uid: str | None = None  # a re-created EtcdBackup (new uid) is a new single backup
    retry: RetryPolicy = NO_RETRY  # scheduled backups: agent.retry merged with the job's own retry
    from_cr: bool = False  # an OpenShift Backup CR: messages name its retentionPolicy fields

    @property
    def retries(self) -> bool:
        """Whether a failed run of this job is tried again (scheduled backups with more than one attempt)."""
        return not self.single and self.schedule is not None and self.retry.attempts > 1

    @property
    def kind(self) -> str:
        return "single" if self.single else "backup"

    @property
    def key(self) -> str:
        if self.single:
            return f"single/{self.namespace or '-'}/{self.name}"
        return f"backup/{self.name}"


Options = TypeVar("Options", DefragJob, EncryptionRotation, DrillJob)


@dataclass(frozen=True)
class _ScheduledTask(Generic[Options]):
    """A scheduled maintenance job on the cluster: its ``options`` are its section of the DaemonConfig."""

    KIND: ClassVar[str]
    name: str
    schedule: Schedule
    options: Options
    origin: str
    jitter: float = 0.0
    catch_up: bool = True
    enabled: bool = True

    @property
    def kind(self) -> str:
        return self.KIND

    @property
    def key(self) -> str:
        return f"{self.KIND}/{self.name}"


@dataclass(frozen=True)
class DefragSpec(_ScheduledTask[DefragJob]):
    """A scheduled defragmentation (an item of ``defrag``)."""

    KIND: ClassVar[str] = "defrag"


@dataclass(frozen=True)
class RotationSpec(_ScheduledTask[EncryptionRotation]):
    """The scheduled encryption-at-rest key rotation (``encryptionRotation``)."""

    KIND: ClassVar[str] = "rotate"


@dataclass(frozen=True)
class DrillSpec(_ScheduledTask[DrillJob]):
    """A scheduled restore drill (an item of ``drills``)."""

    KIND: ClassVar[str] = "drill"

    @property
    def repository(self) -> str:
        return self.options.repository


Job = BackupJob | DefragSpec | RotationSpec | DrillSpec


@dataclass(frozen=True)
class DaemonConfig:
    etcd: EtcdSection
    agent: AgentSection
    election: ElectionSection
    repositories: dict[str, Repository]
    backups: tuple[BackupJob, ...] = ()
    singles: tuple[BackupJob, ...] = ()
    defrags: tuple[DefragSpec, ...] = ()
    rotations: tuple[RotationSpec, ...] = ()
    drills: tuple[DrillSpec, ...] = ()
    continuous: ContinuousSection | None = None  # the leader receives (continuous backup) when set and enabled
    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def scheduled(self) -> list[Job]:
        jobs: list[Job] = [*self.backups, *self.defrags, *self.rotations, *self.drills]
        return [j for j in jobs if j.enabled and j.schedule is not None]

    def job(self, key: str) -> Job | None:
        jobs: list[Job] = [*self.backups, *self.singles, *self.defrags, *self.rotations, *self.drills]
        for j in jobs:
            if j.key == key:
                return j
        return None

    def summary(self, now: dt.datetime | None = None) -> dict[str, object]:
        """A JSON-able view (no secrets: the config holds none, only where to read them)."""
        now = now or dt.datetime.now(dt.UTC)

        def sched(j: Job) -> dict[str, object]:
            s = j.schedule
            d: dict[str, object] = {"name": j.name, "kind": j.kind, "origin": j.origin, "enabled": j.enabled}
            if s is not None:
                d.update(schedule=s.expr, timeZone=s.tz_name, jitter=j.jitter, catchUp=j.catch_up)
                if j.enabled:
                    d["next"] = s.next_after(now).isoformat()
            return d

        return {
            "files": list(self.files),
            "agent": self.agent.model_dump(by_alias=True),
            "election": self.election.model_dump(by_alias=True),
            "repositories": [{"name": r.name, "url": redact_url(r.url)} for r in self.repositories.values()],
            "backups": [
                {**sched(b), "repository": b.repository,
                 "retention": b.retention.as_dict() if b.retention else None,
                 "retry": b.retry.model_dump(by_alias=True)} for b in self.backups],
            "singleBackups": [{"name": b.name, "namespace": b.namespace, "repository": b.repository,
                               "origin": b.origin} for b in self.singles],
            "defrag": [{**sched(d), "rule": d.options.rule} for d in self.defrags],
            "encryptionRotation": [{**sched(r), "config": r.options.config, "prune": r.options.prune,
                                    "backups": list(r.options.backups)} for r in self.rotations],
            "drills": [{**sched(d), "repository": d.repository, "select": d.options.select} for d in self.drills],
            "continuous": self.continuous.model_dump(by_alias=True) if self.continuous else None,
            "notes": list(self.notes),
        }
