"""What the daemon calls to do the work: the :class:`JobRunner` protocol and its default implementation.

The daemon only schedules, elects and records; a runner performs. :class:`DefaultRunner` backs up with
:func:`etcdwarden.backup.run.take_backup` into a local directory (``file://`` URLs or plain paths),
lists that directory's manifests as the catalog, and calls the optional libraries lazily:

* retention: :mod:`etcdwarden.repository` (``DefaultRunner.prune``);
* defragmentation: :func:`etcdwarden.defrag.rolling_defrag` (``DefaultRunner.defrag``).

A missing library is a :class:`RunnerUnavailable` error naming it, never a crash of the daemon.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from etcdwarden.daemon.config import Repository
from etcdwarden.daemon.spec import BackupJob, DaemonConfig, DefragSpec
from etcdwarden.errors import EtcdwardenError
from etcdwarden.etcd.client import EtcdClient

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


@dataclass
class DefragOutcome:
    ok: bool
    defragmented: int = 0  # members actually defragmented
    skipped: int = 0  # members the rule left alone
    report: dict[str, Any] | None = None
    error: str | None = None


class JobRunner(Protocol):
    async def backup(self, job: BackupJob) -> JobOutcome: ...

    async def prune(self, job: BackupJob) -> PruneOutcome: ...

    async def catalog(self, repository: str) -> list[dict[str, Any]]: ...

    async def defrag(self, job: DefragSpec) -> DefragOutcome: ...


def local_path(repo: Repository) -> Path:
    """The directory of a ``file://`` URL or plain path; RunnerUnavailable for object stores."""
    url = repo.url
    if "://" not in url:
        return Path(url)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise RunnerUnavailable(f"repository {repo.name}: file:// URLs name a local path (file:///dir), "
                                    f"not host {parsed.netloc!r}")
        return Path(unquote(parsed.path))
    raise RunnerUnavailable(
        f"repository {repo.name}: {parsed.scheme}:// repositories need etcdwarden.repository, which the daemon's "
        "default runner does not use yet; use a file:// repository (e.g. a mounted PVC or NFS share)")


class DefaultRunner:
    """Backs up into local directories; retention and defrag through the libraries, loaded lazily."""

    def __init__(self, client: EtcdClient, config: DaemonConfig) -> None:
        self.client = client
        self.config = config

    def _repo(self, name: str) -> Repository:
        repo = self.config.repositories.get(name)
        if repo is None:
            raise RunnerUnavailable(f"unknown repository {name!r}")
        return repo

    async def backup(self, job: BackupJob) -> JobOutcome:
        from etcdwarden.backup.run import BackupOptions, take_backup

        repo = self._repo(job.repository)
        directory = local_path(repo)
        s = job.settings
        opts = BackupOptions(
            directory=directory,
            resources=[Path(p) for p in s.resources],
            resources_dir=Path(s.resources_dir) if s.resources_dir else None,
            compress=s.compress,
            recipients=list(s.encrypt_to),
            member=s.member,
            release=s.release,
            verify=s.verify,
            encryption_config=Path(s.encryption_config) if s.encryption_config else None,
        )
        result = await take_backup(self.client, opts)
        m = result.manifest
        size = sum(int(f.get("size", 0)) for f in (m.get("files") or {}).values())
        if m.get("resources") and m["resources"].get("file") not in (m.get("files") or {}):
            size += int(m["resources"].get("size", 0))
        return JobOutcome(ok=True, repository=repo.name, location=str(result.manifest_path), size=size,
                          revision=int(m["revision"]) if m.get("revision") is not None else None,
                          manifest=m, warnings=list(result.warnings))

    async def prune(self, job: BackupJob) -> PruneOutcome:
        """Apply ``job.retention`` to ``job.repository``.

        WIRING POINT: replace the body below with the calls into etcdwarden.repository (open the
        repository from ``self._repo(job.repository)``, read its catalog, apply a policy built from
        ``job.retention`` (keepLast, maxSizeGiB, keepWithin, tiers, minKeep) and return what was deleted).
        """
        if job.retention is None:
            return PruneOutcome(ok=True)
        try:
            import etcdwarden.repository  # noqa: F401
        except ImportError:
            raise RunnerUnavailable(
                "retention is not available yet: it needs etcdwarden.repository, which this build does not "
                "include; no backup was deleted") from None
        raise RunnerUnavailable(
            "retention is not wired into the daemon yet (DefaultRunner.prune); no backup was deleted")

    async def catalog(self, repository: str) -> list[dict[str, Any]]:
        """The backups of a repository, newest first: one entry per manifest.

        WIRING POINT: for non-file repositories, and for the full catalog (incomplete backups...),
        call etcdwarden.repository's catalog here.
        """
        repo = self._repo(repository)
        directory = local_path(repo)
        return await asyncio.to_thread(_read_manifests, directory, repo.name)

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
        )
        report = await rolling_defrag(self.client, opts)
        doc = report.as_json()
        done = sum(1 for m in report.members if m.outcome.value == "defragmented")
        skipped = sum(1 for m in report.members if m.outcome.value == "skipped")
        return DefragOutcome(ok=report.ok, defragmented=done, skipped=skipped, report=doc,
                             error=None if report.ok else (report.stopped_reason or "a member failed"))


def _read_manifests(directory: Path, repo: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("backup_*.json"), reverse=True):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        files = m.get("files") or {}
        out.append({
            "repository": repo,
            "id": m.get("timestamp"),
            "createdAt": m.get("created_at"),
            "clusterId": m.get("cluster_id"),
            "member": (m.get("member") or {}).get("name"),
            "revision": m.get("revision"),
            "dbSize": m.get("db_size"),
            "size": sum(int(f.get("size", 0)) for f in files.values()),
            "files": sorted(files),
            "verified": bool(m.get("verified")),
            "etcdVersion": (m.get("etcd") or {}).get("server_version"),
            "manifest": str(path),
        })
    return out


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
