"""What the agent shows of itself: the figures behind ``/metrics`` and the HTTP endpoints that answer from them.

:class:`Observer` keeps the metrics view of an agent (a :class:`~.service.Daemon`) current: the list of
jobs after every configuration, job state as the leader writes it, and (on each :meth:`Observer.refresh`)
member status and, every 5th time or after a job, the repositories' catalogs. It answers ``/healthz``,
``/readyz``, ``/metrics``, ``/api/backups`` and ``/api/jobs`` (:meth:`Observer.routes`). It reads the
agent through :class:`Agent` and changes nothing of it but the metrics view; electing, scheduling,
serving and reloading stay with the agent.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Protocol

from etcdwarden.daemon.http import Handler, Response
from etcdwarden.daemon.jobs import Clock
from etcdwarden.daemon.metrics import CONTENT_TYPE, DaemonMetrics, JobInfo, MemberFigures
from etcdwarden.daemon.runner import JobRunner
from etcdwarden.daemon.spec import DaemonConfig
from etcdwarden.daemon.state import JobState, StateStore
from etcdwarden.defrag.quota import reported
from etcdwarden.errors import EtcdwardenError
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.election import Election

log = logging.getLogger(__name__)


class Agent(Protocol):
    """What the observer reads of the agent it reports on (the agent updates these as it runs)."""

    agent: str
    config: DaemonConfig
    client: EtcdClient
    runner: JobRunner
    store: StateStore
    clock: Clock
    metrics: DaemonMetrics
    election: Election | None
    leading: bool
    campaigning: bool
    current: str | None  # key of the running job


def newest_proven(entries: list[dict[str, Any]]) -> float | None:
    """Unix time of the newest backup whose last restore drill passed (``None``: none)."""
    times = []
    for e in entries:
        if e.get("proven") is True and isinstance(e.get("createdAt"), str):
            try:
                times.append(dt.datetime.fromisoformat(e["createdAt"]).timestamp())
            except ValueError:
                continue
    return max(times) if times else None


class Observer:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.refresh_error: str | None = "not refreshed yet"
        self._refreshes = 0

    def routes(self) -> dict[str, Handler]:
        return {"/healthz": self._healthz, "/readyz": self._readyz, "/metrics": self._metrics,
                "/api/backups": self._api_backups, "/api/jobs": self._api_jobs}

    # -- the metrics view ----------------------------------------------------------------------------
    def job_infos(self) -> None:
        """List the configured jobs (after every configuration), keeping the state known of each."""
        config, view = self.agent.config, self.agent.metrics.view
        now = self.agent.clock()
        infos: dict[str, JobInfo] = {}
        for b in (*config.backups, *config.singles):
            gap = b.schedule.longest_gap(now) if b.schedule is not None and b.enabled else None
            infos[b.key] = JobInfo(b.key, b.name, b.kind, b.repository, gap)
        for d in config.defrags:
            infos[d.key] = JobInfo(d.key, d.name, "defrag", "", d.schedule.longest_gap(now) if d.enabled else None)
        for r in config.rotations:
            gap = r.schedule.longest_gap(now) if r.enabled and r.schedule is not None else None
            infos[r.key] = JobInfo(r.key, r.name, "rotate", "", gap)
        for dr in config.drills:
            infos[dr.key] = JobInfo(dr.key, dr.name, "drill", dr.repository,
                                    dr.schedule.longest_gap(now) if dr.enabled else None)
        old = view.jobs
        view.jobs = {k: (i, old[k][1] if k in old else JobState()) for k, i in infos.items()}

    def on_state(self, key: str, st: JobState) -> None:
        jobs = self.agent.metrics.view.jobs
        if key in jobs:
            jobs[key] = (jobs[key][0], st)

    def catalogs_soon(self) -> None:
        """Refresh the catalogs on the next :meth:`refresh` (a job may have changed them)."""
        self._refreshes = 0

    async def refresh(self) -> None:
        """Job state, member status and (every 5th time, or after a job) the catalogs, for metrics."""
        view = self.agent.metrics.view
        errors: list[str] = []
        try:
            for key, st in (await self.agent.store.load()).items():
                self.on_state(key, st)
        except EtcdwardenError as e:
            errors.append(f"job state: {e}")
        try:
            view.members = await self._member_figures()
        except EtcdwardenError as e:
            errors.append(f"member status: {e}")
        if self._refreshes % 5 == 0:
            await self._refresh_catalogs()
        self._refreshes += 1
        self.refresh_error = "; ".join(errors) or None
        if errors:
            view.refresh_errors += 1
            log.warning("refresh: %s", self.refresh_error)

    async def _member_figures(self) -> list[MemberFigures]:
        from etcdwarden.inspect import status_all

        client = self.agent.client
        members = await client.member_list(linearizable=False)
        eps, names = [], {}
        for m in members:
            for url in list(m.clientURLs)[:1]:
                ep = client.endpoint(url)
                eps.append(ep)
                names[ep.raw] = m.name or f"{m.ID:x}"
        out = []
        for s in await status_all(client, eps):
            f = MemberFigures(endpoint=s.endpoint.raw, name=names.get(s.endpoint.raw, ""), up=s.ok)
            if s.status is not None:
                f.is_leader = s.is_leader
                f.db_size, f.db_size_in_use = int(s.status.dbSize), int(s.status.dbSizeInUse)
                q = reported(s.status)  # etcd >= 3.6 says (0: the 2 GiB default, negative: none)
                f.quota = self.agent.config.agent.etcd_quota_bytes if q is None else q.bytes
            out.append(f)
        return out

    async def _refresh_catalogs(self) -> None:
        counts: dict[str, tuple[int, int]] = {}
        proven: dict[str, float] = {}
        drilled = {d.repository for d in self.agent.config.drills if d.enabled}
        for name in self.agent.config.repositories:
            try:
                entries = await self.agent.runner.catalog(name)
            except EtcdwardenError as e:
                log.debug("catalog of %s: %s", name, e)
                continue
            # the metrics count complete backups (failed, unverified, unreadable and corrupt ones are not backups
            # one can restore: counting them would hide a repository that holds none)
            complete = [e for e in entries if e.get("state") == "complete"]
            counts[name] = (len(complete), sum(int(e.get("size") or 0) for e in complete))
            newest = newest_proven(complete)
            if newest is not None or name in drilled:
                proven[name] = newest or 0.0
        self.agent.metrics.view.repositories = counts
        self.agent.metrics.view.proven = proven

    # -- HTTP --------------------------------------------------------------------------------------
    async def _healthz(self, _q: dict[str, list[str]]) -> Response:
        a = self.agent
        return Response.json(200, {"status": "ok", "agent": a.agent, "leader": a.leading})

    async def _readyz(self, _q: dict[str, list[str]]) -> Response:
        a = self.agent
        problems = []
        if self.refresh_error:
            problems.append(self.refresh_error)
        if not a.metrics.view.config_ok:
            problems.append("the last configuration reload failed (the previous one is in use)")
        if a.election is not None and not (a.leading or a.campaigning):
            problems.append("not taking part in the election")
        body = {"ready": not problems, "agent": a.agent, "leader": a.leading, "problems": problems}
        return Response.json(200 if not problems else 503, body)

    async def _metrics(self, _q: dict[str, list[str]]) -> Response:
        return Response(200, self.agent.metrics.render(), CONTENT_TYPE)

    async def _api_backups(self, q: dict[str, list[str]]) -> Response:
        config = self.agent.config
        names = q.get("repository") or list(config.repositories)
        unknown = [n for n in names if n not in config.repositories]
        if unknown:
            return Response.json(404, {"error": f"unknown repository {unknown[0]!r}",
                                       "repositories": sorted(config.repositories)})
        out: dict[str, list[dict[str, Any]]] = {}
        errors: dict[str, str] = {}
        for n in names:
            try:
                out[n] = await self.agent.runner.catalog(n)
            except EtcdwardenError as e:
                errors[n] = str(e)
        return Response.json(200, {"repositories": out, "errors": errors})

    async def _api_jobs(self, _q: dict[str, list[str]]) -> Response:
        a = self.agent
        now = a.clock()
        jobs = []
        for key, (info, st) in sorted(a.metrics.view.jobs.items()):
            job = a.config.job(key)
            nxt = None
            if job is not None and job.schedule is not None and job.enabled:
                nxt = job.schedule.next_after(now).isoformat()
            d = json.loads(st.to_json())
            jobs.append({"key": key, "name": info.name, "kind": info.kind, "repository": info.repository,
                         "next": nxt, "state": d})
        return Response.json(200, {"agent": a.agent, "leader": a.leading, "running": a.current, "jobs": jobs})
