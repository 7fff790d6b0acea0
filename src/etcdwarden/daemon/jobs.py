"""Which jobs are due, and running one job: state recorded before and after, retention after success.

Rules:

* single backups (``EtcdBackup`` CRs, ``singleBackups``) run once; a failed one is not retried (as
  OpenShift's ``BackupFailed``), an aborted one is (it never finished);
* scheduled jobs follow :func:`~etcdwarden.daemon.schedule.due_slot`; a failure counts as a run (the next
  slot tries again, no retry storm); an aborted run (SIGTERM after the grace period, lost leadership)
  does not, so the next leader runs it;
* retention runs only after a successful backup, so a failing backup never deletes anything;
* an encryption key rotation (``encryptionRotation``) runs through the runner's ``rotate``; a runner
  without one fails the run (the job is reported, never skipped silently).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from etcdwarden.daemon.runner import JobRunner, RotationRunner
from etcdwarden.daemon.schedule import Due, due_slot, next_wakeup
from etcdwarden.daemon.spec import BackupJob, DaemonConfig, DefragSpec, Job, RotationSpec
from etcdwarden.daemon.state import ABORTED, FAILURE, SUCCESS, JobState, StateStore
from etcdwarden.errors import EtcdwardenError
from etcdwarden.etcd.election import LeadershipLost

log = logging.getLogger(__name__)
T = TypeVar("T")

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class RunRecord:
    key: str
    kind: str
    name: str
    slot: dt.datetime
    result: str
    duration: float
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"job": self.name, "kind": self.kind, "slot": self.slot.isoformat(), "result": self.result,
                "duration": round(self.duration, 3), "error": self.error, **self.detail}


class JobExecutor:
    def __init__(self, config: DaemonConfig, runner: JobRunner, store: StateStore, agent: str,
                 clock: Clock = utcnow, on_state: Callable[[str, JobState], None] | None = None) -> None:
        self.config = config
        self.runner = runner
        self.store = store
        self.agent = agent
        self.clock = clock
        self.on_state = on_state
        self.tolerance = max(300.0, 2 * config.agent.tick)

    # -- deciding ------------------------------------------------------------------------------
    def due_jobs(self, now: dt.datetime, states: dict[str, JobState], use_jitter: bool = True
                 ) -> list[tuple[Job, Due]]:
        """Due jobs, single backups first, then in order of their start times."""
        singles: list[tuple[Job, Due]] = []
        for s in self.config.singles:
            st = states.get(s.key)
            if st is None or not st.done or (s.uid is not None and st.uid != s.uid):
                singles.append((s, Due(slot=now, start_at=now, first_run=True)))
        scheduled: list[tuple[Job, Due]] = []
        for job in self.config.scheduled:
            assert job.schedule is not None
            st = states.get(job.key)
            d = due_slot(job.schedule, job.key, now, st.last_finished if st else None, job.jitter,
                         job.catch_up, self.tolerance, use_jitter)
            if d is not None:
                scheduled.append((job, d))
        scheduled.sort(key=lambda x: x[1].start_at)
        return singles + scheduled

    def next_wakeup(self, now: dt.datetime, states: dict[str, JobState]) -> dt.datetime | None:
        times = []
        for job in self.config.scheduled:
            assert job.schedule is not None
            st = states.get(job.key)
            times.append(next_wakeup(job.schedule, job.key, now, st.last_finished if st else None, job.jitter))
        return min(times) if times else None

    # -- running -------------------------------------------------------------------------------
    async def _save(self, key: str, st: JobState) -> None:
        await self.store.save(key, st)
        if self.on_state is not None:
            self.on_state(key, st)

    async def run(self, job: Job, due: Due, states: dict[str, JobState]) -> RunRecord:
        """Run ``job`` for ``due.slot``; LeadershipLost if the start cannot be recorded."""
        st = states.get(job.key) or JobState()
        started = self.clock()
        st.running = {"slot": due.slot.isoformat(), "started": started.isoformat(), "agent": self.agent}
        await self._save(job.key, st)  # only the leader gets past this line
        log.info("job %s started (slot %s%s)", job.name, due.slot.isoformat(),
                 ", catch-up" if due.missed else "", extra={"event": "job_started", "job": job.name, "kind": job.kind})
        t0 = time.monotonic()
        record = RunRecord(job.key, job.kind, job.name, due.slot, FAILURE, 0.0)
        try:
            if isinstance(job, BackupJob):
                await self._backup(job, st, record)
            elif isinstance(job, RotationSpec):
                await self._rotate(job, st, record)
            else:
                await self._defrag(job, st, record)
        except asyncio.CancelledError:
            record.result, record.error = ABORTED, "aborted (shutdown or lost leadership)"
            st.running, st.last_result, st.last_error = None, ABORTED, record.error
            st.last_started, st.failures = started, st.failures + 1
            with contextlib.suppress(EtcdwardenError, TimeoutError):
                await asyncio.wait_for(self._save(job.key, st), 5.0)
            log.warning("job %s aborted", job.name, extra={"event": "job_aborted", "job": job.name})
            raise
        record.duration = time.monotonic() - t0
        st.running = None
        st.last_slot, st.last_started, st.last_finished = due.slot, started, self.clock()
        st.last_duration, st.agent = record.duration, self.agent
        st.last_result, st.last_error = record.result, record.error
        if isinstance(job, BackupJob) and job.uid is not None:
            st.uid = job.uid
        if record.result == SUCCESS:
            st.successes += 1
            st.last_success = st.last_finished
        else:
            st.failures += 1
        if isinstance(job, BackupJob) and record.result == SUCCESS and job.retention is not None:
            await self._prune(job, st, record)
        await self._save(job.key, st)
        level = logging.INFO if record.result == SUCCESS else logging.ERROR
        log.log(level, "job %s finished: %s%s", job.name, record.result, f" ({record.error})" if record.error else "",
                extra={"event": "job_finished", **record.as_json()})
        return record

    async def _backup(self, job: BackupJob, st: JobState, record: RunRecord) -> None:
        try:
            out = await self.runner.backup(job)
        except LeadershipLost:
            raise
        except EtcdwardenError as e:
            record.error = str(e)
            return
        except Exception as e:  # a bug must not kill the daemon; it is reported as a failed run
            log.exception("backup job %s crashed", job.name)
            record.error = f"internal error: {type(e).__name__}: {e}"
            return
        if not out.ok:
            record.error = out.error or "the backup failed"
            return
        record.result = SUCCESS
        record.detail = {"location": out.location, "size": out.size, "revision": out.revision,
                         "repository": out.repository}
        st.last_size, st.last_revision, st.last_location = out.size, out.revision, out.location
        for w in out.warnings:
            log.warning("job %s: %s", job.name, w)

    async def _prune(self, job: BackupJob, st: JobState, record: RunRecord) -> None:
        at = self.clock().isoformat()
        try:
            p = await self.runner.prune(job)
        except EtcdwardenError as e:
            st.prune = {"ok": False, "error": str(e), "at": at}
        except Exception as e:
            log.exception("retention of job %s crashed", job.name)
            st.prune = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}", "at": at}
        else:
            st.prune = {"ok": p.ok, "deleted": p.deleted, "kept": p.kept, "error": p.error, "at": at}
        if not st.prune.get("ok"):
            st.prune_failures += 1
            log.error("retention of job %s failed: %s", job.name, st.prune.get("error"),
                      extra={"event": "prune_failed", "job": job.name})
        elif st.prune.get("error"):  # retention ran, but raised an alert (e.g. the newest alone exceeds the cap)
            log.warning("retention of job %s: %s", job.name, st.prune.get("error"),
                        extra={"event": "prune_alert", "job": job.name})
        record.detail["prune"] = st.prune

    async def _guarded(self, what: str, name: str, record: RunRecord, call: Awaitable[T]) -> T | None:
        """Await a runner call; a failure becomes ``record.error`` (leadership loss propagates)."""
        try:
            return await call
        except LeadershipLost:
            raise
        except EtcdwardenError as e:
            record.error = str(e)
        except Exception as e:
            log.exception("%s job %s crashed", what, name)
            record.error = f"internal error: {type(e).__name__}: {e}"
        return None

    async def _defrag(self, job: DefragSpec, st: JobState, record: RunRecord) -> None:
        out = await self._guarded("defrag", job.name, record, self.runner.defrag(job))
        if out is None:
            return
        st.details = {"defragmented": out.defragmented, "skipped": out.skipped}
        record.detail = dict(st.details)
        if out.ok:
            record.result = SUCCESS
        else:
            record.error = out.error or "the defragmentation failed"

    async def _rotate(self, job: RotationSpec, st: JobState, record: RunRecord) -> None:
        if not hasattr(self.runner, "rotate"):
            record.error = "this runner cannot rotate encryption keys (it has no rotate())"
            return
        runner: RotationRunner = self.runner  # type: ignore[assignment]  # checked just above
        out = await self._guarded("rotation", job.name, record, runner.rotate(job))
        if out is None:
            return
        st.details = {"newKey": out.new_key, "rewritten": out.rewritten, "pruned": out.pruned}
        record.detail = dict(st.details)
        for n in out.notes:
            log.info("job %s: %s", job.name, n)
        if out.ok:
            record.result = SUCCESS
        else:
            record.error = out.error or "the key rotation failed"

    async def clear_stale(self, states: dict[str, JobState]) -> None:
        """A new leader: runs marked as running belong to a leader that is gone; mark them aborted."""
        for key, st in states.items():
            if st.running:
                log.warning("job %s was left running by %s; marking it aborted", key, st.running.get("agent"))
                st.running = None
                st.last_result, st.last_error = ABORTED, "aborted (the agent running it went away)"
                st.failures += 1
                await self._save(key, st)
