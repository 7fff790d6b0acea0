"""The agent: elect, run due jobs while leading, serve health and metrics, obey SIGTERM and SIGHUP.

Every agent (one per control-plane host, say) campaigns in etcd's election under the configured
prefix; only the leader runs jobs. A leader whose lease is lost aborts its running job at once (its
state writes would be refused anyway) and campaigns again. SIGTERM stops scheduling, lets a running
job finish within ``agent.shutdownGrace`` and aborts it after that, then resigns so another agent takes
over at once. SIGHUP re-reads the configuration; an invalid one is reported and the running one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from etcdwarden import __version__
from etcdwarden.daemon.http import HttpServer, Response
from etcdwarden.daemon.jobs import Clock, JobExecutor, RunRecord, utcnow
from etcdwarden.daemon.metrics import CONTENT_TYPE, DaemonMetrics, JobInfo, MemberFigures
from etcdwarden.daemon.runner import DefaultRunner, JobRunner
from etcdwarden.daemon.schedule import Due
from etcdwarden.daemon.spec import DaemonConfig, Job
from etcdwarden.daemon.state import FAILURE, SUCCESS, EtcdStateStore, JobState, StateStore
from etcdwarden.errors import EtcdwardenError, Timeout
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.election import Election, LeadershipLost

log = logging.getLogger(__name__)
T = TypeVar("T")
RunnerFactory = Callable[[EtcdClient, DaemonConfig], JobRunner]


@dataclass
class OnceReport:
    leader: bool
    records: list[RunRecord] = field(default_factory=list)
    note: str | None = None

    @property
    def ok(self) -> bool:
        """Every job succeeded, retention included (a CronJob must not report success over a failed prune)."""
        return all(r.result == SUCCESS and (r.detail.get("prune") or {}).get("ok", True) for r in self.records)

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
                 store: StateStore | None = None, listen: str | None = None) -> None:
        self.config = config
        self.client = client
        self.agent = agent or config.agent.name or socket.gethostname()
        self.clock = clock
        self.reload_fn = reload
        self.runner_factory = runner_factory
        self.runner = runner_factory(client, config)
        self.listen = listen or config.agent.listen
        self.metrics = DaemonMetrics(self.agent, __version__)
        el = config.election
        self.election: Election | None = None
        if el.enabled:
            self.election = Election(client, (el.prefix + "election").encode(), b"", int(el.ttl))
        election = self.election
        self.store: StateStore = store or EtcdStateStore(
            client, el.prefix, (lambda: election.leadership) if election is not None else None)
        self.executor = JobExecutor(config, self.runner, self.store, self.agent, clock, on_state=self._on_state)
        self.http = HttpServer({"/healthz": self._healthz, "/readyz": self._readyz, "/metrics": self._metrics,
                                "/api/backups": self._api_backups, "/api/jobs": self._api_jobs})
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.leading = False
        self.campaigning = False
        self.current: str | None = None  # key of the running job
        self.refresh_error: str | None = "not refreshed yet"
        self._refreshes = 0
        self._job_infos()

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

    async def reload(self) -> bool:
        if self.reload_fn is None:
            return False
        sd_notify("RELOADING=1")
        try:
            new = await asyncio.to_thread(self.reload_fn)
        except EtcdwardenError as e:
            self.metrics.view.config_ok = False
            self.metrics.view.config_reload_failures += 1
            log.error("configuration reload failed, keeping the running configuration: %s", e,
                      extra={"event": "config_reload_failed"})
            sd_notify("READY=1")
            return False
        for section in ("etcd", "election"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("the %s section changed: it takes effect after a restart", section)
        if new.agent.listen != self.config.agent.listen:
            log.warning("agent.listen changed: it takes effect after a restart")
        self.apply_config(new)
        self.metrics.view.config_ok = True
        log.info("configuration reloaded: %d scheduled job(s), %d single backup(s)", len(new.scheduled),
                 len(new.singles), extra={"event": "config_reloaded"})
        sd_notify("READY=1")
        return True

    def apply_config(self, config: DaemonConfig) -> None:
        self.config = config
        self.runner = self.runner_factory(self.client, config)
        self.executor.config = config
        self.executor.runner = self.runner
        self._job_infos()
        self._wake.set()

    def _job_infos(self) -> None:
        now = self.clock()
        infos: dict[str, JobInfo] = {}
        for b in (*self.config.backups, *self.config.singles):
            gap = b.schedule.longest_gap(now) if b.schedule is not None and b.enabled else None
            infos[b.key] = JobInfo(b.key, b.name, b.kind, b.repository, gap)
        for d in self.config.defrags:
            infos[d.key] = JobInfo(d.key, d.name, "defrag", "", d.schedule.longest_gap(now) if d.enabled else None)
        for r in self.config.rotations:
            gap = r.schedule.longest_gap(now) if r.enabled and r.schedule is not None else None
            infos[r.key] = JobInfo(r.key, r.name, "rotate", "", gap)
        old = self.metrics.view.jobs
        self.metrics.view.jobs = {k: (i, old[k][1] if k in old else JobState()) for k, i in infos.items()}

    def _on_state(self, key: str, st: JobState) -> None:
        jobs = self.metrics.view.jobs
        if key in jobs:
            jobs[key] = (jobs[key][0], st)

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
        """Serve until :meth:`request_stop` (SIGTERM)."""
        await self.http.start(self.listen)
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
                await self.election.close()
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
        first = True
        while not self._stop.is_set() and not (lost is not None and lost.is_set()):
            try:
                states = await self.store.load()
                if first:
                    await self.executor.clear_stale(states)
                    first = False
            except LeadershipLost:
                raise
            except EtcdwardenError as e:
                log.warning("cannot read the job state: %s", e)
                await self._wait(min(5.0, self.config.agent.tick), *([lost] if lost else []))
                continue
            now = self.clock()
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
            self._refreshes = 0  # refresh the catalog soon

    async def run_once(self) -> OnceReport:
        """Become leader (waiting up to ``election.onceWait``), run every due job once, resign."""
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
        try:
            ran: set[str] = set()
            states = await self.store.load()
            await self.executor.clear_stale(states)
            while not self._stop.is_set() and not (lost is not None and lost.is_set()):
                states = await self.store.load()
                due = [(j, d) for j, d in self.executor.due_jobs(self.clock(), states, use_jitter=False)
                       if j.key not in ran]
                if not due:
                    break
                job, d = due[0]
                ran.add(job.key)
                rec = await self._run_job(job, d, states, lost)
                report.records.append(rec or RunRecord(job.key, job.kind, job.name, d.slot, FAILURE, 0.0,
                                                       "aborted or not recorded"))
            if not ran:
                report.note = "no job was due"
        finally:
            self._set_leader(False)
            if self.election is not None:
                await self.election.close()
        return report

    # -- figures ---------------------------------------------------------------------------------
    async def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            await self.refresh()
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({stop}, timeout=self.config.agent.metrics_interval)
            stop.cancel()

    async def refresh(self) -> None:
        """Job state, member status and (every 5th time, or after a job) the catalogs, for metrics."""
        errors: list[str] = []
        try:
            for key, st in (await self.store.load()).items():
                self._on_state(key, st)
        except EtcdwardenError as e:
            errors.append(f"job state: {e}")
        try:
            self.metrics.view.members = await self._member_figures()
        except EtcdwardenError as e:
            errors.append(f"member status: {e}")
        if self._refreshes % 5 == 0:
            await self._refresh_catalogs()
        self._refreshes += 1
        self.refresh_error = "; ".join(errors) or None
        if errors:
            self.metrics.view.refresh_errors += 1
            log.warning("refresh: %s", self.refresh_error)

    async def _member_figures(self) -> list[MemberFigures]:
        from etcdwarden.inspect import status_all

        members = await self.client.member_list(linearizable=False)
        eps, names = [], {}
        for m in members:
            for url in list(m.clientURLs)[:1]:
                ep = self.client.endpoint(url)
                eps.append(ep)
                names[ep.raw] = m.name or f"{m.ID:x}"
        out = []
        for s in await status_all(self.client, eps):
            f = MemberFigures(endpoint=s.endpoint.raw, name=names.get(s.endpoint.raw, ""), up=s.ok)
            if s.status is not None:
                f.is_leader = s.is_leader
                f.db_size, f.db_size_in_use = int(s.status.dbSize), int(s.status.dbSizeInUse)
                f.quota = int(s.status.dbSizeQuota) or self.config.agent.etcd_quota_bytes
            out.append(f)
        return out

    async def _refresh_catalogs(self) -> None:
        counts: dict[str, tuple[int, int]] = {}
        for name in self.config.repositories:
            try:
                entries = await self.runner.catalog(name)
            except EtcdwardenError as e:
                log.debug("catalog of %s: %s", name, e)
                continue
            counts[name] = (len(entries), sum(int(e.get("size") or 0) for e in entries))
        self.metrics.view.repositories = counts

    # -- HTTP --------------------------------------------------------------------------------------
    async def _healthz(self, _q: dict[str, list[str]]) -> Response:
        return Response.json(200, {"status": "ok", "agent": self.agent, "leader": self.leading})

    async def _readyz(self, _q: dict[str, list[str]]) -> Response:
        problems = []
        if self.refresh_error:
            problems.append(self.refresh_error)
        if not self.metrics.view.config_ok:
            problems.append("the last configuration reload failed (the previous one is in use)")
        if self.election is not None and not (self.leading or self.campaigning):
            problems.append("not taking part in the election")
        body = {"ready": not problems, "agent": self.agent, "leader": self.leading, "problems": problems}
        return Response.json(200 if not problems else 503, body)

    async def _metrics(self, _q: dict[str, list[str]]) -> Response:
        return Response(200, self.metrics.render(), CONTENT_TYPE)

    async def _api_backups(self, q: dict[str, list[str]]) -> Response:
        names = q.get("repository") or list(self.config.repositories)
        unknown = [n for n in names if n not in self.config.repositories]
        if unknown:
            return Response.json(404, {"error": f"unknown repository {unknown[0]!r}",
                                       "repositories": sorted(self.config.repositories)})
        out: dict[str, list[dict[str, Any]]] = {}
        errors: dict[str, str] = {}
        for n in names:
            try:
                out[n] = await self.runner.catalog(n)
            except EtcdwardenError as e:
                errors[n] = str(e)
        return Response.json(200, {"repositories": out, "errors": errors})

    async def _api_jobs(self, _q: dict[str, list[str]]) -> Response:
        now = self.clock()
        jobs = []
        for key, (info, st) in sorted(self.metrics.view.jobs.items()):
            job = self.config.job(key)
            nxt = None
            if job is not None and job.schedule is not None and job.enabled:
                nxt = job.schedule.next_after(now).isoformat()
            d = json.loads(st.to_json())
            jobs.append({"key": key, "name": info.name, "kind": info.kind, "repository": info.repository,
                         "next": nxt, "state": d})
        return Response.json(200, {"agent": self.agent, "leader": self.leading, "running": self.current,
                                   "jobs": jobs})

