"""The agent: elect, run due jobs while leading, serve health and metrics, obey SIGTERM and SIGHUP.

What the endpoints answer and the figures behind ``/metrics`` are :mod:`.observe`'s (an
:class:`~.observe.Observer` the :class:`Daemon` owns); this module starts and stops the HTTP server.

Every agent (one per control-plane host, say) campaigns in etcd's election under the configured
prefix; only the leader runs jobs. A leader whose lease is lost aborts its running job at once (its
state writes would be refused anyway) and campaigns again. SIGTERM stops scheduling, lets a running
job finish within ``agent.shutdownGrace`` and aborts it after that, then resigns so another agent takes
over at once. SIGHUP re-reads the configuration and the HTTP TLS certificate, key and bearer token
files (which are also re-read when they change); an invalid configuration or unusable file is reported
and what runs is kept.

``--once`` (:meth:`Daemon.run_once`) retries a failed scheduled backup *within the run*, as its retry
policy says, but starts no attempt after the run's deadline (``--deadline``, 30m by default) or at or
after the job's next slot: a CronJob run is the only chance until the next schedule, and a pod re-run
by Kubernetes would find nothing due (the failure is recorded) and report success over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from etcdwarden import __version__
from etcdwarden.daemon.config import AgentSection, exposure_problem, is_loopback_listen
from etcdwarden.daemon.continuous import Continuous
from etcdwarden.daemon.http import HttpServer
from etcdwarden.daemon.httpsec import HttpSecurity
from etcdwarden.daemon.jobs import Clock, JobExecutor, RunRecord, utcnow
from etcdwarden.daemon.metrics import DaemonMetrics
from etcdwarden.daemon.observe import Observer
from etcdwarden.daemon.runner import DefaultRunner, JobRunner
from etcdwarden.daemon.schedule import Due
from etcdwarden.daemon.spec import DaemonConfig, Job
from etcdwarden.daemon.state import FAILURE, SUCCESS, EtcdStateStore, JobState, StateStore
from etcdwarden.errors import EtcdwardenError, Timeout, UsageError
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.election import Election, LeadershipLost

log = logging.getLogger(__name__)
T = TypeVar("T")
RESIGN_TIMEOUT = 5.0  # seconds a stopping agent spends resigning and revoking its lease
RunnerFactory = Callable[[EtcdClient, DaemonConfig], JobRunner]
Sleep = Callable[[float], Awaitable[None]]
ONCE_DEADLINE = 1800.0  # --once: no retry starts later than this after the run began


@dataclass
class OnceReport:
    leader: bool
    records: list[RunRecord] = field(default_factory=list)
    note: str | None = None

    def finals(self) -> list[RunRecord]:
        """The last attempt of each job run (a failed attempt followed by a successful retry counts as success)."""
        last: dict[str, RunRecord] = {}
        for r in self.records:
            last[r.key] = r
        return list(last.values())

    @property
    def ok(self) -> bool:
        """Every job succeeded, retention included (a CronJob must not report success over a failed prune)."""
        return all(r.result == SUCCESS and (r.detail.get("prune") or {}).get("ok", True) for r in self.finals())

    def as_json(self) -> dict[str, Any]:
        return {"leader": self.leader, "ok": self.ok, "note": self.note, "runs": [r.as_json() for r in self.records]}


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about READY/STOPPING/RELOADING; a no-op elsewhere."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    addr = "\0" + path[1:] if path.startswith("@") else path
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(message.encode())


class Daemon:
    def __init__(self, config: DaemonConfig, client: EtcdClient, *, runner_factory: RunnerFactory = DefaultRunner,
                 agent: str | None = None, clock: Clock = utcnow, reload: Callable[[], DaemonConfig] | None = None,
                 store: StateStore | None = None, listen: str | None = None, sleep: Sleep | None = None) -> None:
        self.config = config
        self.client = client
        self.agent = agent or config.agent.name or socket.gethostname()
        self.clock = clock
        self.reload_fn = reload
        self.runner_factory = runner_factory
        self.runner = runner_factory(client, config)
        self.listen = listen or config.agent.listen
        self.listen_source = "--listen" if listen else "agent.listen"  # for the message of a refused address
        self.sleep = sleep  # --once waits for retries with it (tests pass one that advances their clock)
        self.security = HttpSecurity()
        self.metrics = DaemonMetrics(self.agent, __version__)
        el = config.election
        self.election: Election | None = None
        if el.enabled:
            self.election = Election(client, (el.prefix + "election").encode(), b"", int(el.ttl))
        election = self.election
        self.store: StateStore = store or EtcdStateStore(
            client, el.prefix, (lambda: election.leadership) if election is not None else None)
        self.continuous = Continuous(client)  # the receiver, while this agent leads (``continuous``)
        self.observer = Observer(self)  # the metrics view and the HTTP endpoints
        self.executor = JobExecutor(config, self.runner, self.store, self.agent, clock, on_state=self.observer.on_state)
        self.http = HttpServer(self.observer.routes(), guard=self.security.guard)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.leading = False
        self.campaigning = False
        self.current: str | None = None  # key of the running job
        self.observer.job_infos()

    # -- control -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        log.info("stop requested")
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def _reload_failed(self, what: str, error: EtcdwardenError) -> None:
        self.metrics.view.config_ok = False
        self.metrics.view.config_reload_failures += 1
        log.error("%s failed, keeping what runs: %s", what, error, extra={"event": "config_reload_failed"})

    async def reload(self) -> bool:
        """SIGHUP: the configuration, then the HTTP TLS and token files, all or nothing."""
        if self.reload_fn is None:
            return await self.reload_http_files("reloading the HTTP TLS/token files")
        sd_notify("RELOADING=1")
        try:
            new = await asyncio.to_thread(self.reload_fn)
        except EtcdwardenError as e:
            self._reload_failed("configuration reload", e)
            sd_notify("READY=1")
            return False
        try:
            material = await asyncio.to_thread(self.security.prepare, self._security_view(new))
        except EtcdwardenError as e:
            self.security.failed(self._security_view(new))  # the file watch retries once they change again
            self._reload_failed("configuration reload (HTTP TLS/token files)", e)
            sd_notify("READY=1")
            return False
        for section in ("etcd", "election"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("the %s section changed: it takes effect after a restart", section)
        if new.agent.listen != self.config.agent.listen:
            log.warning("agent.listen changed: it takes effect after a restart")
        if (new.agent.tls is None) != (self.config.agent.tls is None):
            log.warning("agent.tls was %s: it takes effect after a restart",
                        "added" if new.agent.tls is not None else "removed")
        self.security.commit(material)
        self.apply_config(new)
        self.metrics.view.config_ok = True
        log.info("configuration reloaded: %d scheduled job(s), %d single backup(s)", len(new.scheduled),
                 len(new.singles), extra={"event": "config_reloaded"})
        sd_notify("READY=1")
        return True

    def _security_view(self, config: DaemonConfig) -> AgentSection:
        """``config.agent`` as far as it can apply while serving: TLS stays as it was started (on or off)."""
        agent = config.agent
        if agent.tls is not None and not self.security.tls_enabled:
            agent = agent.model_copy(update={"tls": None})
        return agent

    async def reload_http_files(self, what: str = "reloading the changed HTTP TLS/token files") -> bool:
        agent = self._security_view(self.config)
        try:
            material = await asyncio.to_thread(self.security.prepare, agent)
        except EtcdwardenError as e:
            self.security.failed(agent)
            self._reload_failed(what, e)
            return False
        self.security.commit(material)
        self.metrics.view.config_ok = True
        log.info("HTTP TLS/token files reloaded", extra={"event": "http_files_reloaded"})
        return True

    def apply_config(self, config: DaemonConfig) -> None:
        self.config = config
        self.runner = self.runner_factory(self.client, config)
        self.executor.config = config
        self.executor.runner = self.runner
        self.observer.job_infos()
        if self.leading:
            task = asyncio.ensure_future(self._reconfigure_receiver(config))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._wake.set()

    async def _reconfigure_receiver(self, config: DaemonConfig) -> None:
        try:
            await self.continuous.restart_if_changed(config)
        except EtcdwardenError as e:
            log.warning("continuous backup cannot start: %s", e)
        self.metrics.view.receive = self.continuous.figures

    # -- waiting helpers ---------------------------------------------------------------------
    async def _until_stop(self, coro: Coroutine[Any, Any, T]) -> T | None:
        """Run ``coro`` unless a stop is requested first (then cancel it and return None)."""
        task = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, EtcdwardenError):
            await task
        return None

    async def _wait(self, seconds: float, *events: asyncio.Event) -> None:
        self._wake.clear()
        waits = [asyncio.ensure_future(e.wait()) for e in (self._stop, self._wake, *events)]
        try:
            await asyncio.wait(waits, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    # -- the loops -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until :meth:`request_stop` (SIGTERM). UsageError if the HTTP endpoint cannot be set up safely."""
        agent = self.config.agent
        problem = exposure_problem(self.listen, agent.tls is not None, agent.insecure_http, self.listen_source)
        if problem:
            raise UsageError(problem)
        ssl_context = self.security.start(agent)
        await self.http.start(self.listen, ssl_context)
        if agent.tls is None and not is_loopback_listen(self.listen):
            log.warning("serving plain HTTP on %s:%d (agent.insecureHttp)", self.http.host, self.http.port)
        refresher = asyncio.create_task(self._refresh_loop(), name="etcdwarden-refresh")
        sd_notify("READY=1")
        try:
            while not self._stop.is_set():
                if self.election is None:
                    self._set_leader(True)
                    await self._lead(None)
                    continue
                await self._campaign_and_lead(self.election)
        finally:
            sd_notify("STOPPING=1")
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            self._set_leader(False)
            if self.election is not None:
                # best effort and bounded: if etcd does not answer, the lease expires within its TTL anyway,
                # and a stop must not hang on one request timeout per endpoint
                try:
                    await asyncio.wait_for(self.election.close(), RESIGN_TIMEOUT)
                except TimeoutError:
                    log.warning("could not resign within %gs; the leadership ends when the lease expires",
                                RESIGN_TIMEOUT)
            await self.http.close()
            log.info("stopped")

    async def _campaign_and_lead(self, election: Election) -> None:
        election.value = self._identity()
        self.campaigning = True
        try:
            ld = await self._until_stop(election.campaign())
        except EtcdwardenError as e:
            log.warning("campaign failed: %s; retrying", e)
            await self._wait(2.0)
            return
        finally:
            self.campaigning = False
        if ld is None:
            return
        self._set_leader(True)
        try:
            await self._lead(election.lost)
        except LeadershipLost as e:
            log.warning("%s", e)
        finally:
            self._set_leader(False)
        if not election.lost.is_set():
            await election.resign()  # e.g. the key was deleted under us: campaign afresh

    def _set_leader(self, leading: bool) -> None:
        if leading and not self.leading:
            self.metrics.view.leader_changes += 1
            log.info("this agent (%s) leads: it runs the jobs", self.agent, extra={"event": "leader"})
        elif not leading and self.leading:
            log.info("this agent no longer leads", extra={"event": "follower"})
        self.leading = leading
        self.metrics.view.leader = leading

    def _identity(self) -> bytes:
        return json.dumps({"agent": self.agent, "pid": os.getpid(), "http": f"{self.http.host}:{self.http.port}"},
                          sort_keys=True).encode()

    async def _lead(self, lost: asyncio.Event | None) -> None:
        """Run the due jobs (and the receiver, for ``continuous``) while leading."""
        self._start_receiving()
        try:
            await self._lead_jobs(lost)
        finally:
            await self.continuous.stop()  # the open segment is written; the next leader resumes after it

    def _start_receiving(self) -> None:
        try:
            self.continuous.start(self.config)
        except EtcdwardenError as e:
            log.warning("continuous backup cannot start: %s", e)
        self.metrics.view.receive = self.continuous.figures

    async def _lead_jobs(self, lost: asyncio.Event | None) -> None:
        first = True
        while not self._stop.is_set() and not (lost is not None and lost.is_set()):
            try:
                states = await self.store.load()
                if first:
                    await self.executor.clear_stale(states)
                    first = False
                await self.executor.adopt(self.clock(), states)
            except LeadershipLost:
                raise
            except EtcdwardenError as e:
                log.warning("cannot read the job state: %s", e)
                await self._wait(min(5.0, self.config.agent.tick), *([lost] if lost else []))
                continue
            now = self.clock()
            try:
                await self.executor.drop_stale_retries(now, states)
            except LeadershipLost:
                raise
            except EtcdwardenError as e:
                log.warning("cannot record a dropped retry: %s", e)
            due = self.executor.due_jobs(now, states)
            if due:
                job, d = due[0]
                await self._run_job(job, d, states, lost)
                continue
            wake = self.executor.next_wakeup(now, states)
            delay = self.config.agent.tick if wake is None else min(
                self.config.agent.tick, max(0.05, (wake - now).total_seconds()))
            await self._wait(delay, *([lost] if lost else []))

    async def _run_job(self, job: Job, due: Due, states: dict[str, JobState],
                       lost: asyncio.Event | None) -> RunRecord | None:
        """Run one job; abort it when leadership is lost, or on stop after the grace period."""
        task = asyncio.create_task(self.executor.run(job, due, states), name=f"etcdwarden-job-{job.name}")
        self.current = job.key
        stop = asyncio.ensure_future(self._stop.wait())
        lost_w = asyncio.ensure_future(lost.wait()) if lost is not None else None
        try:
            await asyncio.wait({x for x in (task, stop, lost_w) if x is not None}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and lost is not None and lost.is_set():
                log.warning("leadership lost: aborting job %s", job.name)
                task.cancel()
            elif not task.done() and self._stop.is_set():
                grace = self.config.agent.shutdown_grace
                log.info("stopping: job %s may run %gs more before it is aborted", job.name, grace)
                await asyncio.wait({task}, timeout=grace)
                if not task.done():
                    task.cancel()
            try:
                return await task
            except asyncio.CancelledError:
                return None
            except LeadershipLost:
                raise
            except EtcdwardenError as e:
                log.error("job %s: could not record its state: %s", job.name, e)
                return None
        finally:
            stop.cancel()
            if lost_w is not None:
                lost_w.cancel()
            self.current = None
            self.observer.catalogs_soon()

    async def _pause(self, seconds: float, lost: asyncio.Event | None) -> None:
        """Wait for a retry (cut short by a stop or lost leadership); the injected ``sleep`` in tests."""
        if self.sleep is not None:
            await self.sleep(seconds)
        else:
            await self._wait(seconds, *([lost] if lost is not None else []))

    async def run_once(self, deadline: float = ONCE_DEADLINE) -> OnceReport:
        """Become leader (waiting up to ``election.onceWait``), run every due job once, retry failed scheduled
        backups as their policy says while the next attempt starts within ``deadline`` seconds (and before
        the job's next slot), resign."""
        if self.election is not None:
            self.election.value = self._identity()
            try:
                ld = await self._until_stop(self.election.campaign(timeout=self.config.election.once_wait))
            except Timeout as e:
                await self.election.close()
                return OnceReport(leader=False, note=f"{e}; the leading agent runs the jobs")
            if ld is None:
                await self.election.close()
                return OnceReport(leader=False, note="stopped before becoming leader")
        self._set_leader(True)
        report = OnceReport(leader=True)
        lost = self.election.lost if self.election is not None else None
        self.executor.retry_deadline = self.clock() + dt.timedelta(seconds=deadline)
        try:
            ran: set[str] = set()
            tried: set[tuple[str, int]] = set()
            states = await self.store.load()
            await self.executor.clear_stale(states)
            while not self._stop.is_set() and not (lost is not None and lost.is_set()):
                states = await self.store.load()
                now = self.clock()
                await self.executor.adopt(now, states)
                await self.executor.drop_stale_retries(now, states)
                due = [(j, d) for j, d in self.executor.due_jobs(now, states, use_jitter=False)
                       if (j.key not in ran or d.retry) and (j.key, d.attempt) not in tried]
                if not due:
                    pending = [(j, t) for j, t in self.executor.pending_retries(states)
                               if j.key in ran and (j.key, (states[j.key].attempt + 1)) not in tried]
                    if not pending:
                        break
                    waiting, at = pending[0]
                    if at <= now:
                        break  # due but not runnable (dropped, or no longer allowed): nothing to wait for
                    log.info("waiting for the retry of %s at %s", waiting.name, at.isoformat())
                    await self._pause(max(0.0, (at - now).total_seconds()), lost)
                    continue
                job, d = due[0]
                ran.add(job.key)
                tried.add((job.key, d.attempt))
                rec = await self._run_job(job, d, states, lost)
                report.records.append(rec or RunRecord(job.key, job.kind, job.name, d.slot, FAILURE, 0.0,
                                                       "aborted or not recorded", attempt=d.attempt))
            if not ran:
                report.note = "no job was due"
        finally:
            self.executor.retry_deadline = None
            self._set_leader(False)
            if self.election is not None:
                await self.election.close()
        return report

    # -- periodic chores --------------------------------------------------------------------------
    async def _refresh_loop(self) -> None:
        """Every ``agent.metricsInterval``: reload changed HTTP TLS/token files, refresh the figures."""
        while not self._stop.is_set():
            if self.security.changed(self._security_view(self.config)):
                await self.reload_http_files()
            await self.observer.refresh()
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({stop}, timeout=self.config.agent.metrics_interval)
            stop.cancel()
