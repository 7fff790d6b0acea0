"""Resolve the documents read into one :class:`~.spec.DaemonConfig`, with the checks that span documents.

:mod:`.loader` reads and validates each document on its own and hands over what it found
(:class:`Documents`); :func:`resolve` checks what no single document can: exactly one DaemonConfig,
repository names defined once and every reference to one defined, job names unique across the
DaemonConfig and the custom resources, jitter shorter than the schedule, repository options and defrag
rules that compile, a safe HTTP endpoint. It turns every item and custom resource into a job, and notes
(not errors) what works but may surprise: a CR with no schedule, a retry backoff as long as the
schedule, a bearer token over plain HTTP.
"""

from __future__ import annotations

import datetime as dt
import difflib
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.daemon import crs
from etcdwarden.daemon.config import (
    API_VERSION,
    KIND,
    DaemonConfigDoc,
    RetryPolicy,
    exposure_problem,
    is_loopback_listen,
)
from etcdwarden.daemon.problems import Document, Loc, Problem, locate, path_text
from etcdwarden.daemon.schedule import Schedule
from etcdwarden.daemon.spec import BackupJob, DaemonConfig, DefragSpec, DrillSpec, RotationSpec
from etcdwarden.errors import UsageError
from etcdwarden.units import format_duration


@dataclass
class Documents:
    """The valid documents of the configuration by kind, in the order read, and the files read."""

    daemon: list[tuple[DaemonConfigDoc, Document, Loc]] = field(default_factory=list)
    backups: list[tuple[crs.BackupCR, Document, Loc]] = field(default_factory=list)
    singles: list[tuple[crs.EtcdBackupCR, Document, Loc]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    raw_repo_names: set[str] = field(default_factory=set)  # repositories of an invalid DaemonConfig


def resolve(docs: Documents, problems: list[Problem], now: dt.datetime) -> DaemonConfig | None:
    """The configuration, or None when ``problems`` (those found so far, to which this adds) is not empty."""
    return _Resolver(docs, problems).resolve(now)


@dataclass
class _Resolver:
    docs: Documents
    problems: list[Problem]

    def problem(self, doc: Document | None, loc: Loc, message: str, file: str = "") -> None:
        self.problems.append(locate(doc, loc, message, file))

    def resolve(self, now: dt.datetime) -> DaemonConfig | None:
        daemon = self.docs.daemon
        if not daemon:
            if not self.problems:
                self.problem(None, (), f"no {API_VERSION} {KIND} document found", ", ".join(self.docs.files))
            return None
        for _cfg, doc, loc in daemon[1:]:
            first = daemon[0][1]
            self.problem(doc, (*loc, "kind"), f"a second DaemonConfig (the first is in {first.file}, "
                         f"document {first.index}); merge them into one")
        cfg, cdoc, cloc = daemon[0]
        repos = {}
        for i, r in enumerate(cfg.repositories):
            if r.name in repos:
                self.problem(cdoc, (*cloc, "repositories", cdoc.at("repositories", i), "name"),
                             f"repository {r.name!r} is defined twice")
            repos[r.name] = r
            if r.options:
                opt_loc = (*cloc, "repositories", cdoc.at("repositories", i), "options")
                self._check_options(r.backend_options(), cdoc, opt_loc)
        known = ", ".join(sorted(repos)) or "none"

        def check_repo(name: str, doc: Document, loc: Loc) -> None:
            if name not in repos and name not in self.docs.raw_repo_names:
                close = difflib.get_close_matches(name, sorted(repos), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.problem(doc, loc, f"unknown repository {name!r} (defined in the DaemonConfig: {known}){hint}")

        for ref_loc, ref in cdoc.raw_refs:
            check_repo(ref, cdoc, ref_loc)
        tz = cfg.agent.time_zone
        notes: list[str] = []
        self._check_http(cfg, cdoc, cloc, notes)
        backups: list[BackupJob] = []
        seen: dict[str, str] = {}

        def unique(key: str, origin: str, doc: Document, loc: Loc) -> None:
            if key in seen:
                self.problem(doc, loc, f"job name {key.split('/', 1)[1]!r} is already used by {seen[key]}")
            seen.setdefault(key, origin)

        for i, b in enumerate(cfg.backups):
            loc = (*cloc, "backups", cdoc.at("backups", i))
            origin = f"{cdoc.file}: {path_text(loc)}"
            check_repo(b.repository, cdoc, (*loc, "repository"))
            job = BackupJob(name=b.name, repository=b.repository, settings=b, origin=origin,
                            schedule=Schedule(b.schedule, b.time_zone or tz), jitter=b.jitter,
                            catch_up=b.catch_up, enabled=b.enabled, retention=b.retention,
                            retry=cfg.agent.retry.merged(b.retry))
            unique(job.key, origin, cdoc, (*loc, "name"))
            self._check_jitter(job.schedule, b.jitter, cdoc, (*loc, "jitter"), now)
            self._note_retry(job.schedule, job.retry, origin, notes, now)
            backups.append(job)
        for cr, doc, loc in self.docs.backups:
            origin = f"Backup {cr.metadata.name} ({doc.file})"
            job = cr.to_job(origin, tz, cfg.agent.retry)
            if not job.enabled:
                notes.append(f"{origin}: spec.etcd.schedule is empty (no opinion): no recurring backups")
            elif not job.repository:
                self.problem(doc, (*loc, "spec", "etcd", "pvcName"),
                             f"required: the name of a repository of the DaemonConfig ({known})")
            else:
                check_repo(job.repository, doc, (*loc, "spec", "etcd", "pvcName"))
            unique(job.key, origin, doc, (*loc, "metadata", "name"))
            if job.enabled:
                self._note_retry(job.schedule, job.retry, origin, notes, now)
            backups.append(job)
        singles: list[BackupJob] = []
        for i, s in enumerate(cfg.single_backups):
            loc = (*cloc, "singleBackups", cdoc.at("singleBackups", i))
            origin = f"{cdoc.file}: {path_text(loc)}"
            check_repo(s.repository, cdoc, (*loc, "repository"))
            job = BackupJob(name=s.name, repository=s.repository, settings=s, origin=origin, single=True)
            unique(job.key, origin, cdoc, (*loc, "name"))
            singles.append(job)
        for ecr, doc, loc in self.docs.singles:
            origin = f"EtcdBackup {ecr.metadata.name} ({doc.file})"
            job = ecr.to_job(origin)
            if not job.repository:
                self.problem(doc, (*loc, "spec", "pvcName"),
                             f"required: the name of a repository of the DaemonConfig ({known})")
            else:
                check_repo(job.repository, doc, (*loc, "spec", "pvcName"))
            unique(job.key, origin, doc, (*loc, "metadata", "name"))
            singles.append(job)
        defrags: list[DefragSpec] = []
        for i, d in enumerate(cfg.defrag):
            loc = (*cloc, "defrag", cdoc.at("defrag", i))
            origin = f"{cdoc.file}: {path_text(loc)}"
            self._check_defrag(d.rule, cdoc, loc)
            spec = DefragSpec(name=d.name, schedule=Schedule(d.schedule, d.time_zone or tz), options=d,
                              origin=origin, jitter=d.jitter, catch_up=d.catch_up, enabled=d.enabled)
            unique(spec.key, origin, cdoc, (*loc, "name"))
            self._check_jitter(spec.schedule, d.jitter, cdoc, (*loc, "jitter"), now)
            defrags.append(spec)
        rotations: list[RotationSpec] = []
        rot = cfg.encryption_rotation
        if rot is not None:
            loc = (*cloc, "encryptionRotation")
            origin = f"{cdoc.file}: {path_text(loc)}"
            for i, name in enumerate(rot.backups):
                check_repo(name, cdoc, (*loc, "backups", i))
            rspec = RotationSpec(name=rot.name, schedule=Schedule(rot.schedule, rot.time_zone or tz), options=rot,
                                 origin=origin, jitter=rot.jitter, catch_up=rot.catch_up, enabled=rot.enabled)
            unique(rspec.key, origin, cdoc, (*loc, "name"))
            self._check_jitter(rspec.schedule, rot.jitter, cdoc, (*loc, "jitter"), now)
            rotations.append(rspec)
        drills: list[DrillSpec] = []
        for i, dj in enumerate(cfg.drills):
            loc = (*cloc, "drills", cdoc.at("drills", i))
            origin = f"{cdoc.file}: {path_text(loc)}"
            check_repo(dj.repository, cdoc, (*loc, "repository"))
            dspec = DrillSpec(name=dj.name, schedule=Schedule(dj.schedule, dj.time_zone or tz), options=dj,
                              origin=origin, jitter=dj.jitter, catch_up=dj.catch_up, enabled=dj.enabled)
            unique(dspec.key, origin, cdoc, (*loc, "name"))
            self._check_jitter(dspec.schedule, dj.jitter, cdoc, (*loc, "jitter"), now)
            drills.append(dspec)
        if cfg.continuous is not None:
            check_repo(cfg.continuous.repository, cdoc, (*cloc, "continuous", "repository"))
        if self.problems:
            return None
        return DaemonConfig(etcd=cfg.etcd, agent=cfg.agent, election=cfg.election, repositories=repos,
                            backups=tuple(backups), singles=tuple(singles), defrags=tuple(defrags),
                            rotations=tuple(rotations), drills=tuple(drills), continuous=cfg.continuous,
                            files=tuple(self.docs.files), notes=tuple(notes))

    def _check_http(self, cfg: DaemonConfigDoc, doc: Document, loc: Loc, notes: list[str]) -> None:
        a = cfg.agent
        msg = exposure_problem(a.listen, a.tls is not None, a.insecure_http)
        if msg:
            self.problem(doc, (*loc, "agent", "listen"), msg)
        elif a.tls is None and a.auth is not None and not is_loopback_listen(a.listen):
            notes.append(f"agent.insecureHttp: the bearer token for {a.listen} is sent in clear text (no agent.tls)")

    @staticmethod
    def _note_retry(schedule: Schedule | None, retry: RetryPolicy, origin: str, notes: list[str],
                    now: dt.datetime) -> None:
        if schedule is None or retry.attempts <= 1:
            return
        gap = schedule.shortest_gap(now)
        if retry.backoff >= gap:
            notes.append(f"{origin}: retry backoff {format_duration(retry.backoff)} is not shorter than the "
                         f"schedule's interval ({format_duration(gap)}): a failed run is retried by the next slot "
                         "only")

    def _check_jitter(self, schedule: Schedule | None, jitter: float, doc: Document, loc: Loc,
                      now: dt.datetime) -> None:
        if schedule is None or jitter <= 0:
            return
        gap = schedule.shortest_gap(now)
        if jitter >= gap:
            self.problem(doc, loc, f"jitter {jitter:g}s is not shorter than the schedule's interval ({gap:g}s)")

    def _check_options(self, options: dict[str, Any], doc: Document, loc: Loc) -> None:
        try:
            from etcdwarden.repository.base import RepositoryOptions
        except ImportError:  # checked when the repository is opened
            return
        try:
            RepositoryOptions.from_mapping(options)
        except UsageError as e:
            self.problem(doc, loc, str(e))

    def _check_defrag(self, rule: str | None, doc: Document, loc: Loc) -> None:
        try:
            from etcdwarden.defrag.rules import compile_rule
        except ImportError:  # the defrag library is optional at load time; the job reports it when run
            return
        if rule is not None:
            try:
                compile_rule(rule)
            except UsageError as e:
                self.problem(doc, (*loc, "rule"), str(e).splitlines()[0])
