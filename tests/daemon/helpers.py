"""Shared pieces of the daemon tests: config text, the seeds' CRs, a clock, a scripted runner."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from etcdwarden.daemon.runner import DefragOutcome, JobOutcome, PruneOutcome
from etcdwarden.daemon.spec import BackupJob, DefragSpec
from etcdwarden.errors import EtcdwardenError

# The OpenShift documentation's custom resources, unchanged (seed 003).
SEED_RECURRING = """\
apiVersion: config.openshift.io/v1alpha1
kind: Backup
metadata:
  name: etcd-recurring-backup
spec:
  etcd:
    schedule: "20 4 * * *"
    timeZone: "UTC"
    pvcName: etcd-backup-pvc
"""

SEED_RECURRING_NUMBER = """\
apiVersion: config.openshift.io/v1alpha1
kind: Backup
metadata:
  name: etcd-recurring-backup-number
spec:
  etcd:
    schedule: "20 4 * * *"
    timeZone: "UTC"
    pvcName: etcd-backup-pvc
    retentionPolicy:
      retentionType: RetentionNumber
      retentionNumber:
        maxNumberOfBackups: 5
"""

SEED_RECURRING_SIZE = """\
apiVersion: config.openshift.io/v1alpha1
kind: Backup
metadata:
  name: etcd-recurring-backup-size
spec:
  etcd:
    schedule: "20 4 * * *"
    timeZone: "UTC"
    pvcName: etcd-backup-pvc
    retentionPolicy:
      retentionType: RetentionSize
      retentionSize:
        maxSizeOfBackupsGb: 20
"""

SEED_SINGLE = """\
apiVersion: operator.openshift.io/v1alpha1
kind: EtcdBackup
metadata:
  name: etcd-single-backup
  namespace: openshift-etcd
spec:
  pvcName: etcd-backup-pvc
"""


def daemon_doc(repo: Path, endpoints: list[str] | None = None, extra: str = "", ttl: str = "2s",
               election: bool = True, tick: str = "30s", prefix: str = "/etcdwarden/daemon/") -> str:
    eps = f"  endpoints: {json.dumps(endpoints)}\n" if endpoints else "  dialTimeout: 1s\n"
    return (
        "apiVersion: etcdwarden.io/v1alpha1\n"
        "kind: DaemonConfig\n"
        f"etcd:\n{eps}"
        f"agent:\n  tick: {tick}\n  metricsInterval: 1s\n  shutdownGrace: 5s\n"
        f"election:\n  enabled: {str(election).lower()}\n  ttl: {ttl}\n  prefix: {prefix}\n  onceWait: 60s\n"
        "repositories:\n"
        "  - name: etcd-backup-pvc\n"
        f"    url: file://{repo}\n"
        + extra
    )


class FakeClock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += dt.timedelta(**kw)


@dataclass
class ScriptedRunner:
    """Records calls; ``fail`` makes backups fail (``fail_next``: only the next N); ``block`` makes them wait
    until set; ``during`` is called inside each backup (e.g. to move a fake clock as if it took time);
    ``existing``: complete backups of the cluster its repositories hold (0: a first start backs up at once)."""

    calls: list[str] = field(default_factory=list)
    fail: bool = False
    fail_next: int = 0
    during: Callable[[], None] | None = None
    prune_fail: bool = False
    block: asyncio.Event | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    existing: int = 0
    probes: list[str] = field(default_factory=list)

    async def backup(self, job: BackupJob) -> JobOutcome:
        self.calls.append(f"backup:{job.name}")
        self.started.set()
        if self.block is not None:
            await self.block.wait()
        if self.during is not None:
            self.during()
        if self.fail_next > 0:
            self.fail_next -= 1
            raise EtcdwardenError("snapshot failed: member unreachable (transient)")
        if self.fail:
            raise EtcdwardenError("snapshot failed on every member")
        return JobOutcome(ok=True, repository=job.repository, location=f"/repo/{len(self.calls)}", size=1234,
                          revision=42)

    async def prune(self, job: BackupJob) -> PruneOutcome:
        self.calls.append(f"prune:{job.name}")
        if self.prune_fail:
            raise EtcdwardenError("retention is not available yet")
        return PruneOutcome(ok=True, deleted=["old"], kept=3)

    async def complete_backups(self, job: BackupJob) -> int:
        self.probes.append(job.name)
        return self.existing

    async def catalog(self, repository: str) -> list[dict[str, Any]]:
        return [{"repository": repository, "id": "2024-01-01_000000", "size": 10}]

    async def defrag(self, job: DefragSpec) -> DefragOutcome:
        self.calls.append(f"defrag:{job.name}")
        return DefragOutcome(ok=True, defragmented=1, skipped=2)


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def manifests(repo: Path) -> list[Path]:
    return sorted(repo.glob("backup_*.json")) if repo.exists() else []


P = ParamSpec("P")
R = TypeVar("R")


def arun(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    """Run an async test function in its own event loop (the suite has no asyncio plugin)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper
