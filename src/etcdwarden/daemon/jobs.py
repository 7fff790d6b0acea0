"""Which jobs are due, and running one job: state recorded before and after, retention after success.

Rules:

* a scheduled job with no recorded run waits for its first slot, and a record that does not validate is
  logged and reset (:mod:`etcdwarden.daemon.firstrun`): a daemon installed at 14:00 does not defragment,
  with ``moveLeader``, at 14:00; only a backup whose repository holds no complete backup of this cluster
  (or whose record was reset) runs at once, and the log says why;
* after downtime one catch-up run is due for a missed backup slot (``catchUp``, on by default); a missed
  defragmentation or key rotation waits for its next slot (their ``catchUp`` is off by default);
* single backups (``EtcdBackup`` CRs, ``singleBackups``) run once; a failed one is not retried (as
  OpenShift's ``BackupFailed``), an aborted one is (it never finished);
* scheduled jobs follow :func:`~etcdwarden.daemon.schedule.due_slot`; a failure counts as a run; an
  aborted run (SIGTERM after the grace period, lost leadership) does not, so the next leader runs it;
* a failed *scheduled backup* is retried before its next slot, as its ``retry`` policy says (default:
  3 attempts, 5m then 10m apart): after the n-th failed attempt the next is due ``backoff * 2**(n-1)``
  (at most ``maxBackoff``) after it finished, but only if that is before the next slot. The next slot
  always wins: a retry that would start at or after it is dropped, a pending retry the next slot
  overtakes (downtime, a long attempt) is dropped, never run late, and never more than one attempt is
  due at a time, so downtime cannot cause a storm. The retry time and every attempt are kept in the
  job state in etcd (``retry_at``, ``attempt_log``), so a new leader honours a pending retry; only the
  leader runs it. A run that ends failed with no retry left is counted in ``final_failures`` and
  recorded as a failure (never a success). Defragmentation, key rotation and single backups are not
  retried;
* a slot that passes while a backup *succeeds* is covered by that backup (no back-to-back runs); a slot
  that passes while a backup attempt *fails* is not, so it runs next (the next slot wins);
* retention runs only after a successful backup, so a failing attempt never deletes anything;
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

from etcdwarden.daemon import firstrun
from etcdwarden.daemon.config import DAEMON_SETTINGS, RetryPolicy
from etcdwarden.daemon.runner import DrillRunner, JobRunner, RotationRunner
from etcdwarden.daemon.schedule import Due, due_slot, next_wakeup
from etcdwarden.daemon.spec import BackupJob, DaemonConfig, DefragSpec, DrillSpec, Job, RotationSpec
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
    attempt: int = 1
    attempts: int = 1  # the most this slot may get (the retry policy's attempts)
    retry_at: dt.datetime | None = None  # when the next attempt is due (a failure with a retry pending)

    def as_json(self) -> dict[str, Any]:
        return {"job": self.name, "kind": self.kind, "slot": self.slot.isoformat(), "result": self.result,
                "duration": round(self.duration, 3), "error": self.error, "attempt": self.attempt,
                "attempts": self.attempts, "retry_at": self.retry_at.isoformat() if self.retry_at else None,
                **self.detail}


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
        self.retry_deadline: dt.datetime | None = None  # --once: no retry is scheduled after this

    def _reference(self, job: Job, st: JobState | None) -> dt.datetime | None:
        """The time after which a slot counts as not yet run: when the last run finished, except that a
        failed backup attempt covers only the slots before it started (the next slot wins); for a job that
        never finished a run, when it was first seen, less the tolerance (a ``--once`` CronJob started at
        the slot, or a daemon started a minute after it, is on time for it). None: not adopted yet."""
        if st is None or st.invalid is not None:
            return None
        if (isinstance(job, BackupJob) and st.last_result == FAILURE and st.last_started is not None
                and st.last_finished is not None):
            return min(st.last_started, st.last_finished)
        if st.last_finished is None and st.first_seen is not None:
            return st.first_seen - dt.timedelta(seconds=self.tolerance)
        return st.last_finished

    async def adopt(self, now: dt.datetime, states: dict[str, JobState]) -> None:
        """Record when jobs with no history were first seen (see :func:`etcdwarden.daemon.firstrun.adopt`)."""
        await firstrun.adopt(self.config, self.runner, self._save, now, states, self.tolerance)

    @staticmethod
    def _next_slot(job: Job, slot: dt.datetime) -> dt.datetime | None:
        return job.schedule.next_after(slot) if job.schedule is not None else None

    def _retry_due(self, job: Job, st: JobState, now: dt.datetime) -> Due | None:
        if not isinstance(job, BackupJob) or st.retry_at is None or st.last_slot is None or now < st.retry_at:
            return None
        if not job.retries or st.attempt >= job.retry.attempts:
            return None  # the policy changed: dropped by drop_stale_retries
        nxt = self._next_slot(job, st.last_slot)
        if nxt is not None and now >= nxt:
            return None  # overtaken by the next slot: dropped by drop_stale_retries, never run late
        return Due(slot=st.last_slot, start_at=st.retry_at, attempt=st.attempt + 1)

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
            if firstrun.first_run_due(st):
                assert st is not None and st.first_seen is not None
                scheduled.append((job, Due(slot=st.first_seen, start_at=st.first_seen, first_run=True)))
                continue
            d = due_slot(job.schedule, job.key, now, self._reference(job, st), job.jitter,
                         job.catch_up, self.tolerance, use_jitter)
            if d is None and st is not None:
                d = self._retry_due(job, st, now)
            if d is not None:
                scheduled.append((job, d))
        scheduled.sort(key=lambda x: x[1].start_at)
        return singles + scheduled

    def next_wakeup(self, now: dt.datetime, states: dict[str, JobState]) -> dt.datetime | None:
        times = []
        for job in self.config.scheduled:
            assert job.schedule is not None
            st = states.get(job.key)
            if firstrun.needs_adopting(st) or firstrun.first_run_due(st):
                times.append(now)
                continue
            times.append(next_wakeup(job.schedule, job.key, now, self._reference(job, st), job.jitter))
            if (st is not None and st.retry_at is not None
                    and (st.retry_at > now or self._retry_due(job, st, now) is not None)):
                times.append(max(now, st.retry_at))
        return min(times) if times else None

    def pending_retries(self, states: dict[str, JobState]) -> list[tuple[BackupJob, dt.datetime]]:
        """Scheduled backups with a retry pending, and when it is due, earliest first."""
        out = [(job, st.retry_at) for job in self.config.backups
               if job.enabled and (st := states.get(job.key)) is not None and st.retry_at is not None]
        return sorted(out, key=lambda x: x[1])

    async def drop_stale_retries(self, now: dt.datetime, states: dict[str, JobState]) -> None:
        """Drop pending retries that the next slot overtook (or whose job is gone or no longer retries):
        that slot ended failed. The next slot's own run, if due, starts with attempt 1."""
        for key, st in states.items():
            if st.retry_at is None or st.running:
                continue
            job = self.config.job(key)
            reason = None
            if not isinstance(job, BackupJob) or not job.retries or not job.enabled:
                reason = "the job no longer retries"
            elif st.attempt >= job.retry.attempts:
                reason = f"retry.attempts is now {job.retry.attempts}"
            elif st.last_slot is not None and (nxt := self._next_slot(job, st.last_slot)) is not None and now >= nxt:
                reason = f"the next slot ({nxt.isoformat()}) came first"
            if reason is None:
                continue
            self._give_up(st, f"retry dropped: {reason}")
            log.error("job %s: the retry of slot %s is dropped: %s; the slot ended failed", key,
                      st.last_slot.isoformat() if st.last_slot else "?", reason,
                      extra={"event": "retry_dropped", "job": key})
            await self._save(key, st)

    @staticmethod
    def _give_up(st: JobState, why: str) -> None:
        st.retry_at = None
        st.final_failures += 1
        if st.attempt_log:
            st.attempt_log[-1]["then"] = why

    # -- running -------------------------------------------------------------------------------
    async def _save(self, key: str, st: JobState) -> None:
        await self.store.save(key, st)
        if self.on_state is not None:
            self.on_state(key, st)

    async def run(self, job: Job, due: Due, states: dict[str, JobState]) -> RunRecord:
        """Run ``job`` for ``due.slot`` (attempt ``due.attempt``); LeadershipLost if the start cannot be recorded."""
        st = states.get(job.key) or JobState()
        started = self.clock()
        slot_text = due.slot.isoformat()
        if due.attempt == 1 and st.retry_at is not None and not st.running:
            # a new slot overtook a pending retry of the previous one: that slot ended failed
            self._give_up(st, f"retry dropped: the next slot ({slot_text}) came first")
        st.attempt_log = [e for e in st.attempt_log if e.get("slot") == slot_text][-20:]
        if due.retry:
            st.retries += 1
        st.running = {"slot": slot_text, "started": started.isoformat(), "agent": self.agent, "attempt": due.attempt}
        await self._save(job.key, st)  # only the leader gets past this line
        policy = job.retry if isinstance(job, BackupJob) and job.retries else None
        of = f" attempt {due.attempt}/{policy.attempts}" if policy is not None else ""
        log.info("job %s%s started (slot %s%s)", job.name, of, slot_text, ", catch-up" if due.missed else "",
                 extra={"event": "job_started", "job": job.name, "kind": job.kind, "attempt": due.attempt})
        t0 = time.monotonic()
        record = RunRecord(job.key, job.kind, job.name, due.slot, FAILURE, 0.0, attempt=due.attempt,
                           attempts=policy.attempts if policy is not None else 1)
        try:
            if isinstance(job, BackupJob):
                await self._backup(job, st, record)
            elif isinstance(job, RotationSpec):
                await self._rotate(job, st, record)
            elif isinstance(job, DrillSpec):
                await self._drill(job, st, record)
            else:
                await self._defrag(job, st, record)
        except asyncio.CancelledError:
            # not a finished attempt: a pending retry stays pending, an aborted slot is run again
            record.result, record.error = ABORTED, "aborted (shutdown or lost leadership)"
            st.running, st.last_result, st.last_error = None, ABORTED, record.error
            st.last_started, st.failures = started, st.failures + 1
            st.attempt_log.append({"slot": slot_text, "attempt": due.attempt, "started": started.isoformat(),
                                   "result": ABORTED, "error": record.error})
            with contextlib.suppress(EtcdwardenError, TimeoutError):
                await asyncio.wait_for(self._save(job.key, st), 5.0)
            log.warning("job %s aborted", job.name, extra={"event": "job_aborted", "job": job.name})
            raise
        record.duration = time.monotonic() - t0
        finished = self.clock()
        st.running = None
        st.last_slot, st.last_started, st.last_finished = due.slot, started, finished
        st.last_duration, st.agent = record.duration, self.agent
        st.last_result, st.last_error = record.result, record.error
        st.attempt, st.retry_at = due.attempt, None
        entry: dict[str, Any] = {"slot": slot_text, "attempt": due.attempt, "started": started.isoformat(),
                                 "finished": finished.isoformat(), "result": record.result, "error": record.error}
        st.attempt_log.append(entry)
        if isinstance(job, BackupJob) and job.uid is not None:
            st.uid = job.uid
        if record.result == SUCCESS:
            st.successes += 1
            st.last_success = st.last_finished
        else:
            st.failures += 1
            self._after_failure(job, policy, due, finished, st, record, entry)
        if isinstance(job, BackupJob) and record.result == SUCCESS and job.retention is not None:
            await self._prune(job, st, record)
        await self._save(job.key, st)
        if record.retry_at is not None:
            assert policy is not None
            log.warning("job %s attempt %d/%d failed (%s); retry at %s", job.name, due.attempt, policy.attempts,
                        record.error, record.retry_at.isoformat(),
                        extra={"event": "job_retry_scheduled", **record.as_json()})
        else:
            level = logging.INFO if record.result == SUCCESS else logging.ERROR
            after = f" after {due.attempt} attempts" if due.attempt > 1 else ""
            why = f"; {entry['then']}" if record.result != SUCCESS and entry.get("then") else ""
            log.log(level, "job %s finished: %s%s%s%s", job.name, record.result, after,
                    f" ({record.error})" if record.error else "", why,
                    extra={"event": "job_finished", **record.as_json()})
        return record

    def _after_failure(self, job: Job, policy: RetryPolicy | None, due: Due, finished: dt.datetime, st: JobState,
                       record: RunRecord, entry: dict[str, Any]) -> None:
        """Schedule the next attempt of a failed scheduled backup, or record the slot as failed for good."""
        why: str | None = None
        if policy is None:
            why = None if job.kind in ("defrag", "rotate", "single", "drill") else "no retry (retry.attempts is 1)"
        elif due.attempt >= policy.attempts:
            why = f"no retry left: {due.attempt} attempts failed"
        else:
            at = finished + dt.timedelta(seconds=policy.delay(due.attempt))
            nxt = self._next_slot(job, due.slot)
            if nxt is not None and at >= nxt:
                why = f"retry dropped: it would start at {at.isoformat()}, not before the next slot ({nxt.isoformat()})"
            elif self.retry_deadline is not None and at > self.retry_deadline:
                why = (f"retry dropped: it would start at {at.isoformat()}, after the --once deadline "
                       f"({self.retry_deadline.isoformat()})")
            else:
                st.retry_at = record.retry_at = at
                entry["then"] = f"retry at {at.isoformat()}"
                return
        st.final_failures += 1
        if why:
            entry["then"] = why
            record.detail["then"] = why

    async def _backup(self, job: BackupJob, st: JobState, record: RunRecord) -> None:
        try:
            out = await self.runner.backup(job)
        except LeadershipLost:
            raise
        except EtcdwardenError as e:
            record.error = e.render(DAEMON_SETTINGS)
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
            st.prune = {"ok": False, "error": e.render(DAEMON_SETTINGS), "at": at}
        except Exception as e:
            log.exception("retention of job %s crashed", job.name)
            st.prune = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}", "at": at}
        else:
            st.prune = {"ok": p.ok, "deleted": p.deleted, "kept": p.kept, "error": p.error, "at": at,
                        "corrupt": sorted(p.corrupt)}
            if st.prune["corrupt"]:
                log.error("retention of job %s: corrupt backup(s) kept, not counted, not deleted: %s", job.name,
                          "; ".join(f"{k}: {v}" for k, v in sorted(p.corrupt.items())),
                          extra={"event": "backup_corrupt", "job": job.name})
            for backup_id, why in p.reasons.items():
                log.info("retention of job %s deleted backup %s: %s", job.name, backup_id, why,
                         extra={"event": "backup_pruned", "job": job.name})
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
            record.error = e.render(DAEMON_SETTINGS)
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

    async def _drill(self, job: DrillSpec, st: JobState, record: RunRecord) -> None:
        if not hasattr(self.runner, "drill"):
            record.error = "this runner cannot run restore drills (it has no drill())"
            return
        runner: DrillRunner = self.runner  # type: ignore[assignment]  # checked just above
        out = await self._guarded("drill", job.name, record, runner.drill(job))
        if out is None:
            return
        st.details = out.details()
        record.detail = {**st.details, "repository": job.repository}
        for n in out.notes:
            log.info("job %s: %s", job.name, n)
        for backup_id, why in sorted(out.failed.items()):
            log.error("restore drill of backup %s failed: %s; it is marked unproven (kept)", backup_id, why,
                      extra={"event": "drill_failed", "job": job.name, "backup": backup_id})
        if out.ok:
            record.result = SUCCESS
        else:
            record.error = out.error or "the restore drill failed"

    async def clear_stale(self, states: dict[str, JobState]) -> None:
        """A new leader: runs marked as running belong to a leader that is gone; mark them aborted."""
        for key, st in states.items():
            if st.running:
                log.warning("job %s was left running by %s; marking it aborted", key, st.running.get("agent"))
                st.running = None
                st.last_result, st.last_error = ABORTED, "aborted (the agent running it went away)"
                st.failures += 1
                await self._save(key, st)
