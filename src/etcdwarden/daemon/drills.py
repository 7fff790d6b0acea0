"""The daemon's restore drills (``drills:``): run :func:`etcdwarden.restore.drill.run_drills` within a budget.

A drill is blocking work (fetching, hashing, reading every key) plus two child processes (etcdutl, etcd).
It runs in a thread of its own whose niceness is raised to the job's ``nice`` first (on Linux a thread
has its own; the children inherit it, and are reniced explicitly too; the I/O priority of the
best-effort class follows the niceness), so neither the agent's event loop (election, HTTP) nor the
cluster's own etcd on the same host waits for it. The thread ends with the drill: the raised niceness
never reaches other work. One drill runs at a time: the daemon runs one job at a time.

A drill that outlives ``timeout``, or whose job is cancelled (SIGTERM past the grace period, lost
leadership), is asked to stop: it stops at its next step, stops its etcd, removes its private
directory and writes no record.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from etcdwarden.daemon.spec import DrillSpec
from etcdwarden.errors import EtcdwardenError

if TYPE_CHECKING:
    from etcdwarden.repository.base import RepositoryOptions

log = logging.getLogger(__name__)
T = TypeVar("T")
STOP_WAIT = 120.0  # seconds a cancelled drill is given to stop its etcd and clean up


@dataclass
class DrillJobOutcome:
    ok: bool
    passed: list[str] = field(default_factory=list)  # backup IDs whose drill passed
    failed: dict[str, str] = field(default_factory=dict)  # backup ID -> the drill's problems
    skipped: int = 0
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": sorted(self.failed), "skipped": self.skipped}


async def in_niced_thread(fn: Callable[[], T], nice: int, abort: threading.Event, timeout: float,
                          name: str = "etcdwarden-drill") -> T:
    """Run ``fn`` in a new thread at niceness ``nice``; past ``timeout`` or when cancelled, set ``abort`` and
    wait (at most :data:`STOP_WAIT`) for ``fn`` to stop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if done.done():
            return
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)

    def body() -> None:
        if nice:
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)  # this thread only (Linux)
        try:
            result: Any = fn()
            ok = True
        except BaseException as e:  # handed to the awaiting task
            result, ok = e, False
        with contextlib.suppress(RuntimeError):  # the agent's loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, ok, result)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    try:
        return await asyncio.wait_for(asyncio.shield(done), timeout)
    except TimeoutError:
        abort.set()
        await _wait_stopped(done)
        raise EtcdwardenError(f"the drill took longer than its timeout ({timeout:.0f}s) and was stopped") from None
    except asyncio.CancelledError:
        abort.set()
        await _wait_stopped(done)
        raise


async def _wait_stopped(done: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(asyncio.shield(done), STOP_WAIT)


async def run_drill_job(job: DrillSpec, url: str, repository_options: RepositoryOptions | None) -> DrillJobOutcome:
    """Drill the backups ``job`` selects in the repository at ``url``."""
    from etcdwarden.restore.drill import DrillOptions, run_drills

    o = job.options
    abort = threading.Event()
    options = DrillOptions(
        identity=Path(o.identity_file) if o.identity_file else None,
        work_dir=Path(o.work_dir) if o.work_dir else None,
        etcd=Path(o.etcd) if o.etcd else None, etcdutl=Path(o.etcdutl) if o.etcdutl else None,
        nice=o.nice, abort=abort)

    def work() -> Any:
        return run_drills(url, options, all_unproven=o.select == "all-unproven",
                          max_age=dt.timedelta(seconds=o.max_age), repository_options=repository_options)

    report = await in_niced_thread(work, o.nice, abort, o.timeout, name=f"etcdwarden-drill-{job.name}")
    out = DrillJobOutcome(ok=report.ok, skipped=len(report.skipped), notes=list(report.notes))
    for outcome in report.outcomes:
        if outcome.record.passed:
            out.passed.append(outcome.backup)
        else:
            out.failed[outcome.backup] = "; ".join(outcome.record.problems)
        if outcome.write_error:
            out.failed.setdefault(outcome.backup, outcome.write_error)
    if not out.ok:
        out.error = "; ".join(f"backup {k} unproven: {v}" for k, v in sorted(out.failed.items()))
    return out
