"""``restore quorum``: bring a cluster that lost quorum back from its most advanced surviving member.

No backup is involved, so nothing the survivor holds is lost (a backup restore loses every revision
written after the backup). OpenShift ships ``quorum-restore.sh`` for this; etcd documents
``--force-new-cluster``. Steps, each recorded in the state file (a rerun after a crash continues where
it stopped):

``preflight``
    every runtime can control its member; the cluster really has lost quorum (``--force=quorum``);
    every local data dir is read offline (:mod:`.survey`); the survivor (``--survivor``, default the most
    advanced usable one) must pass the structure check (``--force=structure``) and no other member may
    hold a higher term/index (``--force=not-most-advanced``); no data dir in use by an unmanaged process.
``stop``
    every member, through its runtime.
``copy``
    the survivor's data dir is copied beside it and read back; the original is moved aside
    (``D.pre-quorum-<tag>``, exactly as it was) and the copy takes its place: etcd only ever runs on the copy.
``force-new-cluster``
    the survivor alone with ``--force-new-cluster`` (its committed log kept, every other member removed
    from the membership), until it serves.
``restart``
    stopped and started normally (a restart with the flag would reset the membership again); the revision
    it serves is recorded (never below what its data dir held).
``move-aside``
    every other member's data dir to ``D.pre-quorum-<tag>`` (never deleted).
``join``
    each other member added as a learner, started from empty with ``initial-cluster-state existing``,
    promoted once in sync (one at a time: etcd allows one learner).
``wait-healthy``, ``verify``
    a leader, every member healthy and itself; HashKV and key count at the recorded revision equal on
    every member.
``report``
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from etcdwarden.errors import EtcdError, EtcdwardenError, SafetyRefusal, UsageError
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.inspect import health_all, quorum
from etcdwarden.restore.checks import refuse
from etcdwarden.restore.cluster import InjectedCrash, make_host
from etcdwarden.restore.datadir import new_tag
from etcdwarden.restore.inuse import local_users
from etcdwarden.restore.quorum_context import PRE_QUORUM, QuorumContext, QuorumReport, QuorumRestoreOptions
from etcdwarden.restore.quorum_steps import run_step, step_commands
from etcdwarden.restore.runtimes import Runtime, make_runtime
from etcdwarden.restore.runtimes.base import Host
from etcdwarden.restore.spec import ClusterSpec
from etcdwarden.restore.state import RestoreState
from etcdwarden.restore.survey import DataDirSurvey, ahead_of, most_advanced, survey, wal_dir

__all__ = ["PRE_QUORUM", "STEPS", "QuorumPlan", "QuorumReport", "QuorumRestoreOptions", "default_state_path",
           "plan_quorum_restore", "restore_quorum"]

STEPS = ["preflight", "stop", "copy", "force-new-cluster", "restart", "move-aside", "join", "wait-healthy",
         "verify", "report"]
KIND = "quorum"

Progress = Callable[[str], None]


@dataclass
class QuorumPlan:
    survivor: str
    surveys: list[DataDirSurvey]
    steps: list[tuple[str, list[str]]]
    warnings: list[str]
    resume_from: str | None


def default_state_path(spec_path: Path) -> Path:
    return spec_path.with_name(f"{spec_path.stem}.quorum-state.json")


def _prepare(opts: QuorumRestoreOptions, dry_run: bool) -> QuorumContext:
    spec = ClusterSpec.load(opts.spec_path)
    if opts.survivor is not None:
        spec.member(opts.survivor)  # a UsageError naming the members when unknown
    state_path = opts.state_path or default_state_path(opts.spec_path)
    state = RestoreState.load(state_path)
    resumed: str | None = None
    if state is not None and state.doc.get("finished"):
        if not dry_run:
            state.archive()
        state = None
    if state is not None:
        if state.doc.get("kind") != KIND:
            raise UsageError(f"{state_path} is not the state of a restore quorum; give another --state")
        recorded = state.doc.get("survivor")
        if opts.survivor is not None and opts.survivor != recorded:
            raise SafetyRefusal(f"a quorum restore from survivor {recorded} is in progress (state {state_path}): "
                                f"rerun it with --survivor {recorded} (or without --survivor) to continue, or move "
                                "the state file away to start over", None)
        done = [s for s in STEPS if state.done(s)]
        resumed = STEPS[len(done)] if len(done) < len(STEPS) else None
    else:
        tag = new_tag()
        state = RestoreState.new(state_path, kind=KIND, tag=tag, survivor=opts.survivor,
                                 spec=str(opts.spec_path.resolve()),
                                 token=opts.token or spec.token or f"etcdwarden-{tag}")
    hosts: dict[str, Host] = {}
    runtimes: dict[str, Runtime] = {m.name: make_runtime(m, make_host(m.host, spec, hosts)) for m in spec.members}
    for m in spec.members:
        if not runtimes[m.name].supports_join:
            raise UsageError(f"restore quorum starts the survivor with --force-new-cluster and the other members with "
                             f"initial-cluster-state existing through their runtimes; member {m.name}'s runtime "
                             f"({m.runtime}) cannot (only the process runtime can). By hand: stop every member; copy "
                             "the most advanced survivor's data dir aside and run etcd on the copy once with "
                             "--force-new-cluster, then normally; re-add each other member with `etcdwarden member "
                             "replace NAME --spec ...`")
    client = opts.client or ClientConfig(endpoints=())
    return QuorumContext(opts=opts, spec=spec, state=state, hosts=hosts, runtimes=runtimes, client=client,
                         resumed_at=resumed, dry_run=dry_run)


# -- preflight -----------------------------------------------------------------------------------
async def _quorum_check(ctx: QuorumContext) -> None:
    """Refuse (``--force=quorum``) while a majority of the members still answers: nothing to recover."""
    cfg = ctx.client.with_endpoints(ctx.endpoints(ctx.spec.members))
    async with EtcdClient(dataclasses.replace(cfg, dial_timeout=min(cfg.dial_timeout, 1.0))) as c:
        try:
            q = await quorum(c, await health_all(c, list(cfg.endpoints)))
        except EtcdError:
            return
    if q.has_quorum:
        msg = (f"the cluster has quorum ({q.healthy_voters} of {q.voters} voting members healthy): restore quorum "
               "would rebuild its membership from one member; for failed members use `etcdwarden member replace "
               "NAME`")
        if "quorum" not in ctx.opts.forces:
            raise refuse("quorum", msg)
        ctx.warnings.append(msg + " (--force=quorum)")


def choose(ctx: QuorumContext, surveys: list[DataDirSurvey]) -> DataDirSurvey:
    """The survivor: the one named, or the most advanced usable one; refusals as the module docstring says."""
    by_name = {s.name: s for s in surveys}
    forces = ctx.opts.forces
    name = ctx.opts.survivor or ctx.state.doc.get("survivor")
    if name is None:
        best = most_advanced(surveys)
        if best is None:
            raise EtcdwardenError("no member's data directory can be recovered from ("
                                  + "; ".join(s.label() + (": " + "; ".join(s.problems) if s.problems else "")
                                              for s in surveys)
                                  + f"): restore from a backup with `etcdwarden restore cluster BACKUP --spec "
                                  f"{ctx.opts.spec_path}`")
        chosen = best
    else:
        chosen = by_name[str(name)]
    if chosen.state == "remote":
        raise UsageError(f"member {chosen.name} is on {chosen.host}: restore quorum reads and copies the survivor's "
                         "data dir locally; run it on that host")
    if chosen.state == "absent":
        raise EtcdwardenError(f"member {chosen.name} has no data to recover from: " + "; ".join(chosen.problems))
    if not chosen.usable:
        msg = f"the data of {chosen.name} fails our structure check: " + "; ".join(chosen.problems)
        if "structure" not in forces:
            raise refuse("structure", msg)
        ctx.warnings.append(msg + " (--force=structure)")
    spec_m = ctx.spec.member(chosen.name)
    if wal_dir(spec_m) != spec_m.data_path / "member" / "wal":
        raise UsageError(f"member {chosen.name} keeps its WAL outside its data dir ({wal_dir(spec_m)}): restore "
                         "quorum copies the data dir only; move the WAL into it first")
    ahead = ahead_of(chosen, surveys)
    if ahead:
        mine = chosen.position
        detail = "; ".join(f"{s.name} {'is on ' + s.host + ' (not read)' if s.state == 'remote' else ''}"
                           + (f"holds term {s.position[0]}, index {s.position[1]}" if s.position else "")
                           for s in ahead)
        msg = (f"{chosen.name} is not the most advanced survivor (it holds term {mine[0] if mine else '?'}, index "
               f"{mine[1] if mine else '?'}; {detail}): recovering from it loses what the others hold beyond it. "
               "Choose the most advanced with --survivor, or leave --survivor out")
        if "not-most-advanced" not in forces:
            raise refuse("not-most-advanced", msg)
        ctx.warnings.append(msg + " (--force=not-most-advanced)")
    return chosen


async def preflight(ctx: QuorumContext) -> list[DataDirSurvey]:
    problems: list[str] = []
    for rt in ctx.runtimes.values():
        problems += await rt.check()
    if problems:
        raise EtcdwardenError("pre-flight failed: " + "; ".join(problems))
    await _quorum_check(ctx)
    surveys = survey(ctx.spec)
    chosen = choose(ctx, surveys)
    ctx.state.doc["survivor"] = chosen.name
    ctx.state.doc["surveys"] = [s.as_json() for s in surveys]
    for name, rt in ctx.runtimes.items():
        m = rt.member
        if rt.kind == "process" and m.is_local:
            managed = rt.managed_pids()
            strangers = [u for u in local_users(m.data_path) if u.pid is not None and u.pid not in managed]
            if strangers and "in-use" not in ctx.opts.forces:
                raise refuse("in-use", f"member {name}: {m.data_dir} is in use by "
                             + "; ".join(str(u) for u in strangers) + f", which its runtime (process, pid file "
                             f"{m.pid_path}) does not manage: stopping the member would not stop them")
    return surveys


# -- plan and run --------------------------------------------------------------------------------
async def plan_quorum_restore(opts: QuorumRestoreOptions) -> QuorumPlan:
    """``--dry-run``: every check that changes nothing, the survivor chosen, and every command of every step."""
    ctx = _prepare(opts, dry_run=True)
    try:
        if ctx.state.done("preflight"):
            surveys = survey(ctx.spec)
        else:
            surveys = await preflight(ctx)
        steps = [(s, step_commands(ctx, s)) for s in STEPS]
        return QuorumPlan(str(ctx.state.doc["survivor"]), surveys, steps, ctx.warnings, ctx.resumed_at)
    finally:
        await ctx.close()


async def restore_quorum(opts: QuorumRestoreOptions, progress: Progress | None = None) -> QuorumReport:
    """Run (or continue) the quorum recovery; see the module docstring for the steps."""
    ctx = _prepare(opts, dry_run=False)
    ctx.progress = progress
    try:
        if ctx.resumed_at:
            ctx.say(f"continuing the quorum restore recorded in {ctx.state.path} at step {ctx.resumed_at} "
                    f"(survivor {ctx.state.doc['survivor']})")
        for step in STEPS:
            if ctx.state.done(step):
                continue
            begin = time.monotonic()
            ctx.say(f"step {step} ...")
            if step == "preflight":
                surveys = await preflight(ctx)
                ctx.say("data dirs: " + "; ".join(s.label() for s in surveys))
                ctx.say(f"recovering from {ctx.state.doc['survivor']}")
                info: dict[str, object] = {"survivor": ctx.state.doc["survivor"]}
            else:
                info = await run_step(ctx, step)
            ctx.state.mark(step, seconds=round(time.monotonic() - begin, 3), **info)
            if opts.crash_after == step:
                raise InjectedCrash(f"injected crash after step {step} (ETCDWARDEN_RESTORE_CRASH_AFTER)")
        ctx.state.doc["finished"] = True
        ctx.state.save()
        return ctx.report()
    finally:
        await ctx.close()
