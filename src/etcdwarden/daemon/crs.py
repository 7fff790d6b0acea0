"""OpenShift's automated-backup custom resources, accepted exactly as the documentation writes them.

* ``config.openshift.io/v1alpha1`` ``Backup``: a recurring backup under ``spec.etcd`` (``schedule``,
  ``timeZone``, ``pvcName``, ``retentionPolicy``). It becomes a scheduled backup job named like the
  object. An empty schedule means "no opinion", which in OpenShift means no backups: the job is
  disabled. An empty time zone means the agent's time zone.
* ``operator.openshift.io/v1alpha1`` ``EtcdBackup``: one backup (``spec.pvcName``), run once.

Each becomes a :class:`~.spec.BackupJob` (``to_job``) with the default backup settings (a CR has none).

``pvcName`` names a repository of the DaemonConfig. Retention keeps OpenShift's defaults
(RetentionNumber, 15 backups; RetentionSize 10 GiB) but, unlike OpenShift, runs *after* the new backup
succeeded, counts only complete backups, and never goes below ``minKeep`` (1), so neither the N+1 nor
the "size policy deleted everything" bug can happen.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from etcdwarden.daemon.config import BackupSettings, Retention, RetryPolicy, Strict, check_cron, check_time_zone
from etcdwarden.daemon.schedule import Schedule
from etcdwarden.daemon.spec import BackupJob

BACKUP_API = "config.openshift.io/v1alpha1"
ETCDBACKUP_API = "operator.openshift.io/v1alpha1"
DEFAULT_MAX_NUMBER = 15
DEFAULT_MAX_SIZE_GB = 10


class ObjectMeta(BaseModel):
    """Only ``name`` matters; the rest of Kubernetes metadata (labels, uid...) is accepted and ignored."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(min_length=1)
    namespace: str | None = None
    uid: str | None = None


class RetentionNumber(Strict):
    max_number_of_backups: int = Field(default=DEFAULT_MAX_NUMBER, ge=1)


class RetentionSize(Strict):
    max_size_of_backups_gb: int = Field(default=DEFAULT_MAX_SIZE_GB, ge=1)


class RetentionPolicy(Strict):
    retention_type: Literal["RetentionNumber", "RetentionSize", ""] = ""
    retention_number: RetentionNumber | None = None
    retention_size: RetentionSize | None = None

    @model_validator(mode="after")
    def _union(self) -> RetentionPolicy:
        kind = self.retention_type or "RetentionNumber"
        if kind == "RetentionNumber" and self.retention_size is not None:
            raise ValueError("retentionSize is set but retentionType is RetentionNumber")
        if kind == "RetentionSize" and self.retention_number is not None:
            raise ValueError("retentionNumber is set but retentionType is RetentionSize")
        return self

    def to_retention(self) -> Retention:
        if (self.retention_type or "RetentionNumber") == "RetentionSize":
            size = self.retention_size or RetentionSize()
            return Retention.model_validate({"maxSizeGiB": float(size.max_size_of_backups_gb)})
        number = self.retention_number or RetentionNumber()
        return Retention.model_validate({"keepLast": number.max_number_of_backups})


class BackupEtcdSpec(Strict):
    schedule: str = ""
    time_zone: str = ""
    pvc_name: str = ""
    retention_policy: RetentionPolicy | None = None

    # validated here (not as field types) because OpenShift allows both empty
    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        return check_cron(v) if v else v

    @field_validator("time_zone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_time_zone(v) if v else v


class BackupSpec(Strict):
    etcd: BackupEtcdSpec


class BackupCR(Strict):
    api_version: Literal["config.openshift.io/v1alpha1"]
    kind: Literal["Backup"]
    metadata: ObjectMeta
    spec: BackupSpec
    status: dict[str, Any] | None = None  # as exported by `oc get -o yaml`; ignored

    def retention(self) -> Retention:
        return (self.spec.etcd.retention_policy or RetentionPolicy()).to_retention()

    def to_job(self, origin: str, time_zone: str, retry: RetryPolicy) -> BackupJob:
        """The recurring backup: disabled without a schedule; ``time_zone`` and ``retry`` are the agent's (a CR
        has no retry field, so it gets ``agent.retry``: 3 attempts by default)."""
        e = self.spec.etcd
        return BackupJob(name=self.metadata.name, repository=e.pvc_name, settings=BackupSettings(), origin=origin,
                         schedule=Schedule(e.schedule or "@daily", e.time_zone or time_zone),
                         enabled=bool(e.schedule), retention=self.retention(), namespace=self.metadata.namespace,
                         retry=retry, from_cr=True)


class EtcdBackupSpec(Strict):
    pvc_name: str = ""


class EtcdBackupCR(Strict):
    api_version: Literal["operator.openshift.io/v1alpha1"]
    kind: Literal["EtcdBackup"]
    metadata: ObjectMeta
    spec: EtcdBackupSpec
    status: dict[str, Any] | None = None

    def to_job(self, origin: str) -> BackupJob:
        """The single backup (a re-created object, with a new uid, is a new one)."""
        return BackupJob(name=self.metadata.name, repository=self.spec.pvc_name, settings=BackupSettings(),
                         origin=origin, single=True, namespace=self.metadata.namespace, uid=self.metadata.uid)


KINDS: dict[tuple[str, str], type[Strict]] = {
    (BACKUP_API, "Backup"): BackupCR,
    (ETCDBACKUP_API, "EtcdBackup"): EtcdBackupCR,
}
