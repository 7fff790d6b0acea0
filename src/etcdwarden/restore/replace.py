"""``member replace NAME``: recover from a minority failure without a backup.

Only while the remaining members keep quorum (otherwise ``restore cluster`` is the way, and this
refuses). Steps: stop what is left of the failed member (its runtime), ``member remove``, move its
data directory aside (``D.pre-replace-<tag>``, never deleted), ``member add`` as a learner, start it with
``--initial-cluster-state existing``, wait until its applied index reaches the leader's, promote it
(retried with backoff: etcd refuses until the learner is in sync), wait until every member is healthy.
Each step is idempotent, so rerunning after an interruption finishes the job.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdwarden.errors import EtcdwardenError, SafetyRefusal
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.etcd.endpoints import Endpoint, parse_endpoint
from etcdwarden.inspect import health_all, quorum
from etcdwarden.restore.checks import Forces, refuse
from etcdwarden.restore.cluster import make_host
from etcdwarden.restore.datadir import new_tag
from etcdwarden.restore.health import wait_healthy
from etcdwarden.restore.membership import add_learner, find_by_peer_urls, initial_cluster, promote, wait_caught_up
from etcdwarden.restore.runtimes import Launch, make_runtime
from etcdwarden.restore.runtimes.base import Host
from etcdwarden.restore.spec import ClusterSpec

PRE_REPLACE = ".pre-replace-"


@dataclass
class ReplaceOptions:
    name: str
    spec_path: Path
    client: ClientConfig
    forces: Forces = field(default_factory=Forces)
    token: str | None = None
    timeout: float = 120.0


@dataclass
class ReplaceReport:
    name: str
    removed_id: str | None
    new_id: str
    moved_aside: str | None
    applied_index: int
    seconds: float
    steps: list[str]

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Progress = Callable[[str], None]


def _endpoints(spec: ClusterSpec, names: list[str]) -> list[Endpoint]:
    return [parse_endpoint(spec.member(n).client_urls[0]) for n in names]


async def plan_replace(opts: ReplaceOptions) -> list[str]:
    """The commands ``member replace`` would run (``--dry-run``); checks quorum first."""
    spec = ClusterSpec.load(opts.spec_path)
    m = spec.member(opts.name)
    rt = make_runtime(m, make_host(m.host, spec, {}))
    others = [x.name for x in spec.members if x.name != opts.name]
    async with EtcdClient(opts.client.with_endpoints(_endpoints(spec, others))) as c:
        await _check_quorum(c, opts, m.peer_urls)
    return [*rt.commands("stop"), f"member remove <ID of {m.name}>", f"mv {m.data_dir} {m.data_dir}{PRE_REPLACE}<tag>",
            f"member add --learner --peer-urls {m.peer}",
            *rt.commands("start", Launch("<current members>," + f"{m.name}={m.peer}", "existing")),
            "wait until its applied index reaches the leader's", f"member promote <new ID of {m.name}> (retried)",
            "wait until every member is healthy"]


async def _check_quorum(c: EtcdClient, opts: ReplaceOptions, peer_urls: list[str]) -> None:
    hs = await health_all(c, list(c.config.endpoints))
    q = await quorum(c, hs)
    if not q.has_quorum:
        detail = f"{q.healthy_voters} of {q.voters} voting members healthy, {q.needed} needed" if q.known else \
            "no member answered"
        raise SafetyRefusal(f"the cluster has lost quorum ({detail}): member replace needs a working majority. "
                            f"Recover with `etcdwarden restore cluster BACKUP --spec {opts.spec_path}`", None)
    listed = find_by_peer_urls(await c.member_list(linearizable=False), peer_urls) is not None
    if listed and opts.name not in q.unhealthy_names and "healthy" not in opts.forces:
        raise refuse("healthy", f"member {opts.name} is healthy; member replace is for a failed member")
    after = q.voters - 1
    if q.healthy_voters < after // 2 + 1:
        raise SafetyRefusal(f"removing {opts.name} would leave {q.healthy_voters} healthy of {after} voters: no "
                            "quorum; recover the other members first", None)


async def replace_member(opts: ReplaceOptions, progress: Progress | None = None) -> ReplaceReport:
    begin = time.monotonic()
    say = progress or (lambda _t: None)
    spec = ClusterSpec.load(opts.spec_path)
    m = spec.member(opts.name)
    hosts: dict[str, Host] = {}
    host = make_host(m.host, spec, hosts)
    rt = make_runtime(m, host)
    others = [x.name for x in spec.members if x.name != opts.name]
    steps: list[str] = []
    try:
        async with EtcdClient(opts.client.with_endpoints(_endpoints(spec, others))) as c:
            await _check_quorum(c, opts, m.peer_urls)
            problems = await rt.check()
            if problems:
                raise EtcdwardenError("; ".join(problems))
            say(f"stopping what is left of {m.name} ({rt.kind})")
            await rt.stop()
            await rt.wait(False, opts.timeout)
            old = find_by_peer_urls(await c.member_list(), m.peer_urls)
            removed = None
            if old is not None and not (old.isLearner and not old.name):
                say(f"member remove {old.ID:x}")
                await c.member_remove(int(old.ID))
                removed = f"{old.ID:x}"
                steps.append(f"removed member {removed}")
            aside = None
            if await host.exists(m.data_dir):
                aside = f"{m.data_dir}{PRE_REPLACE}{new_tag()}"
                await host.rename(m.data_dir, aside)
                steps.append(f"moved {m.data_dir} to {aside}")
            say(f"member add --learner {m.peer}")
            mid = await add_learner(c, m.peer_urls, opts.timeout)
            steps.append(f"added learner {mid:x}")
            ic = initial_cluster(await c.member_list(), mid, m.name)
            await rt.start(Launch(ic, "existing", opts.token or spec.token or "etcd-cluster"))
            await rt.wait(True, opts.timeout)
            steps.append(f"started {m.name} with initial-cluster-state existing")
            say(f"waiting for {m.name} to catch up")
            applied = await wait_caught_up(c, _endpoints(spec, [m.name])[0], opts.timeout)
            await promote(c, mid, opts.timeout)
            steps.append(f"promoted {mid:x}")
        async with EtcdClient(opts.client.with_endpoints(_endpoints(spec, [x.name for x in spec.members]))) as c:
            await wait_healthy(c, list(c.config.endpoints), opts.timeout)
        steps.append("every member healthy")
        return ReplaceReport(m.name, removed, f"{mid:x}", aside, applied, time.monotonic() - begin, steps)
    finally:
        for h in hosts.values():
            await h.close()
