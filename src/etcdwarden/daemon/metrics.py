"""Prometheus metrics of the daemon, in a :class:`CollectorRegistry` of its own (no global registry).

Job figures come from the job state in etcd, refreshed on every agent, so whichever agent is scraped
reports the same last success, size and failure counts (the counters survive restarts and leader
changes). Member figures (db size, in use, quota, fragmentation) come from ``Status`` of every member.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from etcdwarden.daemon.state import FAILURE, SUCCESS, JobState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class JobInfo:
    key: str
    name: str
    kind: str  # backup, single, defrag, rotate, drill
    repository: str = ""
    interval: float | None = None  # longest gap between two slots (seconds), for "2x the schedule" alerts


@dataclass
class MemberFigures:
    endpoint: str
    name: str = ""
    up: bool = False
    is_leader: bool = False
    db_size: int = 0
    db_size_in_use: int = 0
    quota: int | None = 0  # None: the member runs without a quota


@dataclass
class MetricsView:
    """What the collector renders; the daemon updates it."""

    agent: str = ""
    version: str = ""
    leader: bool = False
    leader_changes: int = 0
    config_ok: bool = True
    config_reload_failures: int = 0
    refresh_errors: int = 0
    jobs: dict[str, tuple[JobInfo, JobState]] = field(default_factory=dict)
    members: list[MemberFigures] = field(default_factory=list)
    repositories: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (count, bytes)
    # name -> Unix time of the newest backup a restore drill proved (0: none, where a drill job looks)
    proven: dict[str, float] = field(default_factory=dict)


def _g(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


def _c(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


class _Collector(Collector):
    def __init__(self, view: MetricsView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        v = self.view
        info = _g("etcdwarden_daemon_info", "The agent's name and etcdwarden version", ["agent", "version"])
        info.add_metric([v.agent, v.version], 1)
        yield info
        lead = _g("etcdwarden_daemon_leader", "1 when this agent is the elected leader (runs the jobs)")
        lead.add_metric([], 1 if v.leader else 0)
        yield lead
        changes = CounterMetricFamily("etcdwarden_daemon_leader_changes", "Times this agent became leader")
        changes.add_metric([], v.leader_changes)
        yield changes
        cfg = _g("etcdwarden_daemon_config_last_reload_successful", "1 when the last configuration (re)load worked")
        cfg.add_metric([], 1 if v.config_ok else 0)
        yield cfg
        rf = CounterMetricFamily("etcdwarden_daemon_config_reload_failures", "Configuration reloads that failed")
        rf.add_metric([], v.config_reload_failures)
        yield rf
        re_ = CounterMetricFamily("etcdwarden_daemon_refresh_errors", "Failed refreshes of state/status/catalog")
        re_.add_metric([], v.refresh_errors)
        yield re_
        yield from self._jobs()
        yield from self._members()
        count = _g("etcdwarden_repository_backups",
                   "Complete backups in the repository (failed, unverified and corrupt ones not counted)",
                   ["repository"])
        size = _g("etcdwarden_repository_size_bytes", "Bytes of the complete backups in the repository",
                  ["repository"])
        for repo, (n, b) in sorted(v.repositories.items()):
            count.add_metric([repo], n)
            size.add_metric([repo], b)
        yield count
        yield size
        proven = _g("etcdwarden_last_proven_restorable_timestamp",
                    "Unix time of the newest backup a restore drill proved restorable (0: none yet in a repository a "
                    "drill job covers)", ["repository"])
        for repo, t in sorted(v.proven.items()):
            proven.add_metric([repo], t)
        yield proven

    def _jobs(self) -> Iterator[Metric]:
        # not "job": Prometheus' own target label would rename it to exported_job
        bl = ["job_name", "kind", "repository"]
        last_success = _g("etcdwarden_backup_last_success_timestamp_seconds",
                          "Unix time of the last successful backup", bl)
        last_run = _g("etcdwarden_backup_last_run_timestamp_seconds", "Unix time the last backup run finished", bl)
        last_ok = _g("etcdwarden_backup_last_run_success", "1 when the last backup run succeeded", bl)
        duration = _g("etcdwarden_backup_last_duration_seconds", "Seconds the last backup run took", bl)
        size = _g("etcdwarden_backup_last_size_bytes", "Bytes of the last successful backup", bl)
        revision = _g("etcdwarden_backup_last_revision", "etcd revision of the last successful backup", bl)
        interval = _g("etcdwarden_backup_schedule_interval_seconds",
                      "Longest interval between two scheduled runs (alert when no success in 2x this)", bl)
        running = _g("etcdwarden_backup_running", "1 while a backup of this job is running", bl)
        ok_total = _c("etcdwarden_backup_success", "Successful backup runs", bl)
        fail_total = _c("etcdwarden_backup_failures", "Failed or aborted backup attempts (every attempt, retries "
                        "included)", bl)
        final_fail = _c("etcdwarden_backup_final_failures", "Backup runs that ended failed: no retry left, or the "
                        "retry dropped for the next slot", bl)
        retries = _c("etcdwarden_backup_retries", "Retry attempts started (attempts after the first of a slot)", bl)
        attempt = _g("etcdwarden_backup_last_attempt", "Attempt number of the last finished run of the slot "
                     "(1: the first)", bl)
        pending = _g("etcdwarden_backup_retry_pending", "1 while a retry of a failed backup is scheduled", bl)
        retry_at = _g("etcdwarden_backup_next_retry_timestamp_seconds", "Unix time the pending retry is due", bl)
        prune_fail = _c("etcdwarden_prune_failures", "Retention runs that failed", bl)
        corrupt = _g("etcdwarden_prune_corrupt_backups", "Backups the last retention run found corrupt (re-hashed "
                     "against their manifests): kept, not counted, never deleted automatically", bl)
        dl = ["job_name"]
        d_success = _g("etcdwarden_defrag_last_success_timestamp_seconds", "Unix time of the last successful "
                       "defrag run", dl)
        d_duration = _g("etcdwarden_defrag_last_duration_seconds", "Seconds the last defrag run took", dl)
        d_members = _g("etcdwarden_defrag_last_members_defragmented", "Members the last defrag run defragmented",
                       dl)
        d_ok = _c("etcdwarden_defrag_success", "Successful defrag runs", dl)
        d_fail = _c("etcdwarden_defrag_failures", "Failed defrag runs", dl)
        rl = ["job_name", "repository"]
        r_success = _g("etcdwarden_drill_last_success_timestamp_seconds", "Unix time of the last restore drill run "
                       "whose every drill passed", rl)
        r_ok = _g("etcdwarden_drill_last_run_success", "1 when every drill of the last run passed", rl)
        r_duration = _g("etcdwarden_drill_last_duration_seconds", "Seconds the last restore drill run took", rl)
        r_failed = _g("etcdwarden_drill_last_unproven_backups", "Backups the last drill run found unproven (the "
                      "drill failed; kept, never deleted for it)", rl)
        r_total = _c("etcdwarden_drill_success", "Restore drill runs whose every drill passed", rl)
        r_fail = _c("etcdwarden_drill_failures", "Restore drill runs that failed (a drill failed, or could not run)",
                    rl)
        for info, st in sorted(self.view.jobs.values(), key=lambda x: x[0].key):
            if info.kind == "drill":
                lab = [info.name, info.repository]
                if st.last_success:
                    r_success.add_metric(lab, st.last_success.timestamp())
                if st.last_finished:
                    r_ok.add_metric(lab, 1 if st.last_result == SUCCESS else 0)
                if st.last_duration is not None:
                    r_duration.add_metric(lab, st.last_duration)
                failed = st.details.get("failed")
                r_failed.add_metric(lab, len(failed) if isinstance(failed, list) else 0)
                r_total.add_metric(lab, st.successes)
                r_fail.add_metric(lab, st.failures)
                continue
            if info.kind == "defrag":
                lab = [info.name]
                if st.last_success:
                    d_success.add_metric(lab, st.last_success.timestamp())
                if st.last_duration is not None:
                    d_duration.add_metric(lab, st.last_duration)
                d_members.add_metric(lab, float(st.details.get("defragmented", 0)))
                d_ok.add_metric(lab, st.successes)
                d_fail.add_metric(lab, st.failures)
                continue
            lab = [info.name, info.kind, info.repository]
            if st.last_success:
                last_success.add_metric(lab, st.last_success.timestamp())
            if st.last_finished:
                last_run.add_metric(lab, st.last_finished.timestamp())
                last_ok.add_metric(lab, 1 if st.last_result == SUCCESS else 0)
            if st.last_duration is not None:
                duration.add_metric(lab, st.last_duration)
            if st.last_size is not None:
                size.add_metric(lab, st.last_size)
            if st.last_revision is not None:
                revision.add_metric(lab, st.last_revision)
            if info.interval is not None:
                interval.add_metric(lab, info.interval)
            running.add_metric(lab, 1 if st.running else 0)
            ok_total.add_metric(lab, st.successes)
            fail_total.add_metric(lab, st.failures)
            final_fail.add_metric(lab, st.final_failures)
            retries.add_metric(lab, st.retries)
            if st.attempt:
                attempt.add_metric(lab, st.attempt)
            pending.add_metric(lab, 1 if st.retry_at is not None else 0)
            if st.retry_at is not None:
                retry_at.add_metric(lab, st.retry_at.timestamp())
            prune_fail.add_metric(lab, st.prune_failures)
            if info.kind == "backup":
                found = (st.prune or {}).get("corrupt")
                corrupt.add_metric(lab, len(found) if isinstance(found, list) else 0)
        yield from (last_success, last_run, last_ok, duration, size, revision, interval, running, ok_total,
                    fail_total, final_fail, retries, attempt, pending, retry_at, prune_fail, corrupt, d_success,
                    d_duration, d_members, d_ok, d_fail, r_success, r_ok, r_duration, r_failed, r_total, r_fail)

    def _members(self) -> Iterator[Metric]:
        ml = ["member", "endpoint"]
        up = _g("etcdwarden_etcd_member_up", "1 when the member answered Status", ml)
        leader = _g("etcdwarden_etcd_member_is_leader", "1 for the raft leader", ml)
        db = _g("etcdwarden_etcd_db_size_bytes", "Physically allocated size of the member's database", ml)
        in_use = _g("etcdwarden_etcd_db_size_in_use_bytes", "Bytes of the database in use", ml)
        free = _g("etcdwarden_etcd_db_free_bytes", "dbSize - dbSizeInUse: what a defragmentation gives back", ml)
        frag = _g("etcdwarden_etcd_db_fragmentation_ratio", "(dbSize - dbSizeInUse) / dbSize", ml)
        quota = _g("etcdwarden_etcd_db_quota_bytes", "The backend quota (reported by etcd >= 3.6, else configured)",
                   ml)
        for m in self.view.members:
            lab = [m.name, m.endpoint]
            up.add_metric(lab, 1 if m.up else 0)
            if not m.up:
                continue
            leader.add_metric(lab, 1 if m.is_leader else 0)
            db.add_metric(lab, m.db_size)
            in_use.add_metric(lab, m.db_size_in_use)
            free.add_metric(lab, max(0, m.db_size - m.db_size_in_use))
            frag.add_metric(lab, max(0.0, (m.db_size - m.db_size_in_use) / m.db_size) if m.db_size > 0 else 0.0)
            if m.quota is not None:  # no quota: no sample (a 0 would make every size/quota alert fire)
                quota.add_metric(lab, m.quota)
        yield from (up, leader, db, in_use, free, frag, quota)


class DaemonMetrics:
    def __init__(self, agent: str, version: str) -> None:
        self.view = MetricsView(agent=agent, version=version)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self.view))

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "FAILURE", "SUCCESS", "DaemonMetrics", "JobInfo", "MemberFigures", "MetricsView"]
