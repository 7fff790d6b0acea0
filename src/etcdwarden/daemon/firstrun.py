"""Jobs with no history: a new job, or one whose record in etcd did not validate and is reset.

* A scheduled job with no recorded run waits for its first slot: :func:`adopt` records when the leader
  first saw it (``first_seen``; slots more than the tolerance, 5 minutes, before it are not due) and logs
  that slot in the schedule's time zone, so a daemon installed at 14:00 does not start a rolling defrag
  with ``moveLeader`` at 14:00 (a ``--once`` CronJob started on its slot runs it).
* The one exception is a backup whose repository holds no complete backup of this cluster (or cannot be
  listed): it runs at once and ``first_run`` (logged) says why. A cluster with no backup at all should not
  wait for 03:00.
* A record that does not validate (:func:`etcdwarden.daemon.state.decode`) is logged and reset; a backup
  then runs at once (whether its last slot ran is unknown), a defragmentation or key rotation waits for its
  next slot. A single backup with such a record runs, as one never run.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from etcdwarden.daemon.runner import BackupProbe, JobRunner
from etcdwarden.daemon.schedule import jitter_offset, local_time
from etcdwarden.daemon.spec import BackupJob, DaemonConfig
from etcdwarden.daemon.state import JobState
from etcdwarden.etcd.election import LeadershipLost
from etcdwarden.units import format_duration

log = logging.getLogger("etcdwarden.daemon.jobs")


def needs_adopting(st: JobState | None) -> bool:
    """No record, an invalid one, or one from before ``first_seen`` existed that never finished a run."""
    return st is None or st.invalid is not None or (
        st.last_finished is None and st.first_seen is None and not st.running)


def first_run_due(st: JobState | None) -> bool:
    """A backup adopted to run at once (``first_run``) that has not finished a run yet."""
    return (st is not None and st.invalid is None and st.last_finished is None and st.first_run is not None
            and st.first_seen is not None)


async def adopt(config: DaemonConfig, runner: JobRunner, save: Callable[[str, JobState], Awaitable[None]],
                now: dt.datetime, states: dict[str, JobState], tolerance: float = 300.0) -> None:
    """Give every scheduled job with no history its ``first_seen`` (and a backup its ``first_run`` reason),
    saved through ``save``; updates ``states``. A slot at most ``tolerance`` seconds old counts as the first
    (a ``--once`` CronJob starts just after its slot). LeadershipLost if a record cannot be written."""
    for single in config.singles:
        if (st := states.get(single.key)) is not None and st.invalid is not None:
            log.warning("job %s: its state record does not validate (%s); it is reset and the backup runs",
                        single.name, st.invalid, extra={"event": "state_invalid", "job": single.name})
    for job in config.scheduled:
        st = states.get(job.key)
        if not needs_adopting(st):
            continue
        assert job.schedule is not None
        invalid = st.invalid if st is not None else None
        if invalid is not None:
            log.warning("job %s: its state record does not validate (%s); it is reset", job.name, invalid,
                        extra={"event": "state_invalid", "job": job.name})
        if st is None or invalid is not None:
            st = JobState()
        reason: str | None = None
        if isinstance(job, BackupJob):
            if invalid is not None:
                reason = "its state record was reset; whether its last slot ran is unknown"
            else:
                reason = await empty_repository(runner, job)
        st.first_seen, st.first_run = now, reason
        if reason is not None:
            log.info("job %s runs now: %s", job.name, reason,
                     extra={"event": "job_first_run", "job": job.name, "reason": reason})
        else:
            latest = job.schedule.latest_at_or_before(now)
            recent = latest is not None and (now - latest).total_seconds() <= tolerance
            slot = latest if recent and latest is not None else job.schedule.next_after(now)
            jitter = f" (+{format_duration(jitter_offset(job.key, slot, job.jitter))} jitter)" if job.jitter else ""
            log.info("job %s: no run recorded yet; its first run is at its first slot, %s%s", job.name,
                     local_time(job.schedule, slot), jitter,
                     extra={"event": "job_first_slot", "job": job.name, "slot": slot.isoformat()})
        await save(job.key, st)
        states[job.key] = st


async def empty_repository(runner: JobRunner, job: BackupJob) -> str | None:
    """Why a new backup schedule runs at once; None when its repository holds a complete backup of the cluster
    (runners without ``complete_backups`` are asked for their catalog: any complete backup counts)."""
    try:
        if hasattr(runner, "complete_backups"):
            probe: BackupProbe = runner  # type: ignore[assignment]  # checked just above
            count = await probe.complete_backups(job)
        else:
            count = sum(1 for e in await runner.catalog(job.repository) if e.get("state") == "complete")
    except LeadershipLost:
        raise
    except Exception as e:  # any failure to look: better a backup now than none until the first slot
        return (f"repository {job.repository} could not be listed ({type(e).__name__}: {e}); a backup is "
                "taken now rather than waiting for the first slot")
    if count:
        return None
    return (f"repository {job.repository} holds no complete backup of this cluster: a first backup is taken now "
            "instead of waiting for the first slot")
