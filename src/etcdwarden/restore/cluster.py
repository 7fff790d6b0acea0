"""``restore cluster``: restore every member of a cluster from one backup, step by step, resumable.

Steps (each recorded in the state file, so a rerun after a crash continues where it stopped):
``preflight`` (backup verified, runtimes able to control every member, versions, data dirs not in use
by anything else), ``stop`` (every member), ``move-aside`` (every data dir to ``D.pre-restore-<tag>``),
``restore`` (etcdutl; all members from the same snapshot, same initial cluster, a NEW token — or in
``single-then-join`` mode only the first member), ``start``, ``join`` (single-then-join: each other
member added as a learner, started with initial-cluster-state existing, promoted once in sync),
``wait-healthy`` (a leader, every member healthy), ``verify`` (HashKV equal at the backup's revision,
revision and key count as in the backup), ``report``.

OpenShift (:mod:`.static_pods`): with ``--restore-resources`` a ``resources`` step after ``restore`` puts
the bundled static pod resources and manifests back on each host, and with ``--restart-kubelet`` a
``restart-kubelet`` step after ``verify`` restarts the kubelet on each host; without them the report
lists the exact commands left.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from etcdwarden.errors import EtcdwardenError, SafetyRefusal, UsageError
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.repository.window import Target
from etcdwarden.restore import etcdutl as eu
from etcdwarden.restore import static_pods
from etcdwarden.restore.backup import Backup, check_resources, check_trailer
from etcdwarden.restore.checks import check_bump, check_release, check_versions
from etcdwarden.restore.cluster_context import ClusterReport, ClusterRestoreOptions, Context
from etcdwarden.restore.cluster_steps import run_step, step_commands
from etcdwarden.restore.datadir import new_tag
from etcdwarden.restore.pitr import PointInTime, find_restore_backup
from etcdwarden.restore.runtimes import LocalHost, Runtime, make_runtime
from etcdwarden.restore.runtimes.base import Host
from etcdwarden.restore.runtimes.process import ProcessRuntime
from etcdwarden.restore.spec import ClusterSpec
from etcdwarden.restore.state import RestoreState
from etcdwarden.snapshot.scratch import existing_dir, sweep

__all__ = ["MODES", "STEPS", "ClusterPlan", "ClusterReport", "ClusterRestoreOptions", "InjectedCrash",
           "plan_cluster_restore", "restore_cluster", "steps_for"]

MODES = ("all-members", "single-then-join")
STEPS = {
    "all-members": ["preflight", "stop", "move-aside", "restore", "start", "wait-healthy", "verify", "report"],
    "single-then-join": ["preflight", "stop", "move-aside", "restore", "start", "join", "wait-healthy", "verify",
                         "report"],
}


def steps_for(mode: str, restore_resources: bool = False, restart_kubelet: bool = False) -> list[str]:
    """The steps of a run: the mode's, with the OpenShift ones when asked for."""
    steps = list(STEPS[mode])
    if restore_resources:
        steps.insert(steps.index("restore") + 1, "resources")
        if restart_kubelet:
            steps.insert(steps.index("verify") + 1, "restart-kubelet")
    return steps


def _steps(opts: ClusterRestoreOptions) -> list[str]:
    return steps_for(opts.mode, opts.restore_resources, opts.restart_kubelet)


class InjectedCrash(EtcdwardenError):
    """Raised after a step on purpose (``ETCDWARDEN_RESTORE_CRASH_AFTER``), to test resuming."""


@dataclass
class ClusterPlan:
    steps: list[tuple[str, list[str]]]
    warnings: list[str]
    resume_from: str | None
    steps_left: list[str] = field(default_factory=list)


Progress = Callable[[str], None]


def default_state_path(spec_path: Path) -> Path:
    return spec_path.with_name(f"{spec_path.stem}.restore-state.json")


def make_host(member_host: str, spec: ClusterSpec, cache: dict[str, Host]) -> Host:
    from etcdwarden.restore.spec import LOCAL_HOSTS

    key = member_host.strip().lower()
    if key in LOCAL_HOSTS:
        return cache.setdefault("localhost", LocalHost())
    if key not in cache:
        from etcdwarden.restore.runtimes.ssh import SSHHost

        cache[key] = SSHHost(member_host, spec.ssh)
    return cache[key]


def _prepare(opts: ClusterRestoreOptions, dry_run: bool) -> Context:
    if opts.mode not in MODES:
        raise UsageError(f"--mode {opts.mode}: one of {', '.join(MODES)}")
    if opts.bump_revision < 0:
        raise UsageError("--bump-revision must not be negative")
    if (opts.bump_revision > 0) != opts.mark_compacted:
        raise UsageError("--bump-revision N and --mark-compacted go together (etcdutl requires both)")
    spec = ClusterSpec.load(opts.spec_path)
    state_path = opts.state_path or default_state_path(opts.spec_path)
    state = RestoreState.load(state_path)
    backup = find_restore_backup(opts.backup, opts.backup_id, opts.identity, options=opts.repository_options,
                                 stage_near=_staging_near(opts, spec, state_path), point=_resumed_point(opts, state),
                                 no_segments=opts.no_segments, etcdutl=opts.etcdutl)
    try:
        return _prepare_with(opts, dry_run, spec, state_path, state, backup)
    except BaseException:
        backup.close()  # a fetched backup's staging directory
        raise


def _resumed_point(opts: ClusterRestoreOptions, state: RestoreState | None) -> PointInTime | None:
    """A resumed point-in-time restore goes to the revision it started with (not to a later latest point: the
    receiver may have written segments since), unless another target is given (then the state refuses)."""
    point: PointInTime | None = opts.point
    recorded = (state.doc.get("backup") or {}).get("point_in_time") if state is not None and \
        not state.doc.get("finished") else None
    if isinstance(recorded, dict) and isinstance(recorded.get("revision"), int) and \
            (point is None or (point.target.revision is None and point.target.time is None)) and not opts.no_segments:
        base = point or PointInTime()
        return PointInTime(Target(revision=recorded["revision"]), base.etcd, base.progress)
    return point


def _staging_near(opts: ClusterRestoreOptions, spec: ClusterSpec, state_path: Path) -> Path:
    """Where a backup fetched from an object store is staged: beside the first local data dir (as decoded copies
    are, see ``Context.work_dir``), else beside the state file."""
    targets = spec.members if opts.mode == "all-members" else spec.members[:1]
    local = [m for m in targets if m.is_local]
    return existing_dir(local[0].data_path.parent if local else state_path.parent)


def _prepare_with(opts: ClusterRestoreOptions, dry_run: bool, spec: ClusterSpec, state_path: Path,
                  state: RestoreState | None, backup: Backup) -> Context:
    hosts: dict[str, Host] = {}
    runtimes: dict[str, Runtime] = {m.name: make_runtime(m, make_host(m.host, spec, hosts)) for m in spec.members}
    first = runtimes[spec.members[0].name]
    if opts.kill_in == "start" and isinstance(first, ProcessRuntime):
        first.after_spawn = _kill_self
    if opts.mode == "single-then-join":
        for m in spec.members[1:]:
            if not runtimes[m.name].supports_join:
                raise UsageError(f"--mode single-then-join: member {m.name}'s runtime {m.runtime} cannot start it "
                                 "with initial-cluster-state existing (only the process runtime can); use all-members")
    tool = eu.find_etcdutl(opts.etcdutl)  # after every input was checked: no binary runs for a bad one
    resumed: str | None = None
    if state is not None and state.doc.get("finished"):
        if not dry_run:
            state.archive()
        state = None
    if state is not None:
        if state.doc.get("snapshot") != backup.source or state.doc.get("mode") != opts.mode:
            raise SafetyRefusal(f"a restore from {state.doc.get('snapshot')} (mode {state.doc.get('mode')}) is in "
                         f"progress (state {state_path}): rerun it with the same backup and --mode to continue, or "
                         "move the state file away to start over", None)
        recorded = int(state.doc.get("bump_revision") or 0)
        if recorded != opts.bump_revision:
            # members restored with one bump and others with another would not form one consistent cluster
            was = f"--bump-revision {recorded} --mark-compacted" if recorded else "no --bump-revision"
            raise SafetyRefusal(f"the restore in progress (state {state_path}) was started with {was}: rerun it with "
                                "the same flags to continue, or move the state file away to start over", None)
        if bool(state.doc.get("restore_resources")) != opts.restore_resources:
            was = "with" if state.doc.get("restore_resources") else "without"
            raise SafetyRefusal(f"the restore in progress (state {state_path}) was started {was} --restore-resources: "
                                "rerun it the same way to continue, or move the state file away to start over", None)
        steps = _steps(opts)
        done = [s for s in steps if state.done(s)]
        resumed = steps[len(done)] if len(done) < len(steps) else None
    else:
        tag = new_tag()
        state = RestoreState.new(state_path, tag=tag, mode=opts.mode, snapshot=backup.source,
                                 backup=backup.describe(), spec=str(opts.spec_path.resolve()),
                                 token=opts.token or spec.token or f"etcdwarden-{tag}",
                                 bump_revision=opts.bump_revision,
                                 bump_applied=opts.bump_revision if tool.supports_bump else 0,
                                 restore_resources=opts.restore_resources)
    client = opts.client or ClientConfig(endpoints=())
    ctx = Context(opts=opts, spec=spec, state=state, backup=backup, etcdutl=tool, hosts=hosts, runtimes=runtimes,
                  client=client, resumed_at=resumed, dry_run=dry_run)
    static_pods.check_options(ctx)
    return ctx


def _kill_self(pid: int) -> None:
    """The ``kill_in`` test hook: die like a killed run, between starting an etcd and recording its PID."""
    os.kill(os.getpid(), signal.SIGKILL)


def checks_without_io(ctx: Context) -> list[str]:
    """Version, release and resources checks (cheap; run by the plan and by preflight)."""
    o = ctx.opts
    b: Backup = ctx.backup
    w = list(b.notes) + list(ctx.etcdutl.notes)
    w += check_trailer(b, o.skip_hash_check)
    w += check_resources(b, "resources" in o.forces)
    w += check_versions(b.server_version, ctx.etcdutl.version, ctx.target_version(), o.forces)
    w += check_release(b.release, o.release, o.forces)
    w += check_bump(o.bump_revision, ctx.etcdutl.version, ctx.etcdutl.supports_bump, f" ({ctx.etcdutl.path})",
                    o.forces)
    return w


async def plan_cluster_restore(opts: ClusterRestoreOptions) -> ClusterPlan:
    """``--dry-run``: every check that changes nothing, and every command and path of every step."""
    ctx = _prepare(opts, dry_run=True)
    try:
        warnings = checks_without_io(ctx)
        static_pods.check_bundle(ctx)
        steps = [(s, step_commands(ctx, s)) for s in _steps(opts)]
        return ClusterPlan(steps, warnings, ctx.resumed_at, static_pods.steps_left(ctx))
    finally:
        ctx.backup.close()
        await ctx.close()


async def restore_cluster(opts: ClusterRestoreOptions, progress: Progress | None = None) -> ClusterReport:
    """Run (or continue) the restore; see the module docstring for the steps."""
    ctx = _prepare(opts, dry_run=False)
    ctx.progress = progress
    try:
        ctx.warnings += sweep(ctx.work_dir)  # plaintext snapshot copies left by a killed run
        if not ctx.state.path.exists():
            ctx.state.save()
        ctx.warnings += checks_without_io(ctx)
        if ctx.resumed_at:
            ctx.say(f"continuing the restore recorded in {ctx.state.path} at step {ctx.resumed_at}")
        for step in _steps(opts):
            if ctx.state.done(step):
                continue
            begin = time.monotonic()
            ctx.say(f"step {step} ...")
            info = await run_step(ctx, step)
            ctx.state.mark(step, seconds=round(time.monotonic() - begin, 3), **info)
            if opts.crash_after == step:
                raise InjectedCrash(f"injected crash after step {step} (ETCDWARDEN_RESTORE_CRASH_AFTER)")
        ctx.state.doc["finished"] = True
        ctx.state.save()
        report = ctx.report()
        report.steps_left = static_pods.steps_left(ctx)
        return report
    except BaseException:
        if not any(ctx.state.done(s) for s in _steps(opts)):
            ctx.state.path.unlink(missing_ok=True)  # nothing was changed: nothing to continue
        raise
    finally:
        ctx.backup.close()
        await ctx.close()
