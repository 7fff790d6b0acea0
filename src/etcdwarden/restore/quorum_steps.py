"""The steps of ``restore quorum`` (see :mod:`.quorum`), each idempotent so that a rerun can redo it.

Per-member progress is written to the state file as it happens: a data dir already copied or moved
aside, or a member already joined, is never handled twice.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

from etcdwarden.errors import EtcdError, EtcdwardenError
from etcdwarden.fsutil import fsync_dir
from etcdwarden.restore.datadir import RESTORING, remove_restoring
from etcdwarden.restore.health import check_member, verify_cluster, wait_healthy
from etcdwarden.restore.inuse import refusal, users
from etcdwarden.restore.membership import add_learner, initial_cluster, promote, wait_caught_up
from etcdwarden.restore.quorum_context import QuorumContext
from etcdwarden.restore.runtimes.base import Launch
from etcdwarden.restore.serving import identity_problems, process_problems
from etcdwarden.restore.spec import MemberSpec
from etcdwarden.restore.survey import survey_dir

FORCE_NEW_CLUSTER = "--force-new-cluster"


def _where(m: MemberSpec) -> str:
    return f"[{m.name}@{m.host}]"


def _restoring(ctx: QuorumContext, m: MemberSpec) -> str:
    return f"{m.data_dir}{RESTORING}{ctx.tag}"


def _own_launch(ctx: QuorumContext, m: MemberSpec, force: bool) -> Launch:
    """The survivor alone; on a data dir with a WAL etcd takes its membership from the WAL, not from these."""
    return Launch(",".join(f"{m.name}={u}" for u in m.peer_urls), "existing", ctx.token,
                  extra_args=[FORCE_NEW_CLUSTER] if force else [], marker=ctx.tag)


def _notes(ctx: QuorumContext, m: MemberSpec) -> None:
    rt = ctx.runtimes[m.name]
    for n in rt.notes:
        ctx.say(n)
        ctx.warnings.append(n)
    rt.notes.clear()


# -- stop ----------------------------------------------------------------------------------------
async def stop(ctx: QuorumContext) -> dict[str, Any]:
    ctx.state.doc.setdefault("stop_started_at", time.time())
    for name, rt in ctx.runtimes.items():
        await rt.stop()
        await rt.wait(False, ctx.opts.timeout)
        ctx.state.set_member(name, stopped=True)
    for name, rt in ctx.runtimes.items():
        m = rt.member
        if m.is_local and m.data_path.exists():
            found = await users(m.data_path, ctx.client)
            ctx.warnings += refusal(f"member {name}: its runtime ({rt.kind}) is stopped but {m.data_dir}", found,
                                    ctx.opts.forces, "Is data_dir really the directory this member's etcd runs on? "
                                    "Stop what uses it, then rerun")
    return {}


# -- copy the survivor's data dir aside, the copy is what runs ------------------------------------
def _copy_tree(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` (modes, times, symlinks as links), every file and directory fsynced."""
    shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
    for root, dirs, files in os.walk(dst):
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for d in dirs:
            fsync_dir(Path(root) / d)
        fsync_dir(Path(root))
    fsync_dir(dst.parent)


async def copy(ctx: QuorumContext) -> dict[str, Any]:
    m = ctx.survivor
    host = ctx.runtimes[m.name].host
    rec = ctx.state.member(m.name)
    if rec.get("copied"):
        return {}
    restoring, aside = _restoring(ctx, m), ctx.aside(m)
    if not rec.get("copy_verified"):
        if await host.exists(restoring):
            await asyncio.to_thread(remove_restoring, Path(restoring))  # half-copied by a crashed run
        original = await asyncio.to_thread(survey_dir, m)
        if not original.usable:
            raise EtcdwardenError(f"{_where(m)} {m.data_dir} is no longer usable after the stop: "
                                  + "; ".join(original.problems))
        ctx.say(f"{_where(m)} copy {m.data_dir} -> {restoring}")
        await asyncio.to_thread(_copy_tree, m.data_path, Path(restoring))
        copied = await asyncio.to_thread(survey_dir, m, Path(restoring), Path(restoring) / "member" / "wal")
        if not copied.usable or (copied.position, copied.revision) != (original.position, original.revision):
            raise EtcdwardenError(f"{_where(m)} the copy {restoring} does not read back as {m.data_dir} does "
                                  f"({copied.label()} vs {original.label()}): check the file system, then rerun")
        ctx.state.set_member(m.name, copy_verified=True, position=list(original.position or ()),
                             revision=original.revision, compact_revision=original.compact_revision)
    if await host.exists(m.data_dir) and await host.exists(restoring):
        if await host.exists(aside):
            raise EtcdwardenError(f"{_where(m)} both {m.data_dir} and {aside} exist; resolve by hand")
        await host.rename(m.data_dir, aside)  # the original, exactly as it was
    if await host.exists(restoring):
        await host.rename(restoring, m.data_dir)
    if not await host.exists(aside):
        raise EtcdwardenError(f"{_where(m)} the original data dir is not at {aside}; resolve by hand")
    ctx.state.set_member(m.name, copied=True, aside=aside)
    return {"original": aside}


# -- force a one-member cluster, then run it normally --------------------------------------------
async def _serve_alone(ctx: QuorumContext, force: bool) -> int:
    m = ctx.survivor
    rt = ctx.runtimes[m.name]
    what = f"etcd {FORCE_NEW_CLUSTER}" if force else "etcd (normally, without --force-new-cluster)"
    ctx.say(f"{_where(m)} start {what} on {m.data_dir}")
    await rt.start(_own_launch(ctx, m, force))
    _notes(ctx, m)
    pid = await rt.wait_serving(ctx.client, ctx.opts.timeout)
    async with ctx.etcd_client([m]) as c:
        leader = await wait_healthy(c, ctx.endpoints([m]), ctx.opts.timeout)
    ctx.state.set_member(m.name, pid=pid, member_id=f"{leader:x}")
    return leader


async def force_new_cluster(ctx: QuorumContext) -> dict[str, Any]:
    leader = await _serve_alone(ctx, force=True)
    return {"member_id": f"{leader:x}"}


async def restart(ctx: QuorumContext) -> dict[str, Any]:
    m = ctx.survivor
    rt = ctx.runtimes[m.name]
    running_forced = ctx.state.member(m.name).get("normal") is not True
    if running_forced:
        await rt.stop()  # never keep it running with --force-new-cluster: a restart would reset the membership
        await rt.wait(False, ctx.opts.timeout)
        ctx.state.set_member(m.name, normal=True, pid=None)
    await _serve_alone(ctx, force=False)
    ep = ctx.endpoints([m])[0]
    async with ctx.etcd_client([m]) as c:
        st = await c.status(ep)
        revision = int(st.header.revision)
        members = await c.member_list()
    held = ctx.state.member(m.name).get("revision")
    if held is not None and revision < int(held):
        raise EtcdwardenError(f"{_where(m)} serves revision {revision} but its data dir held revision {held}: "
                              f"the original is kept at {ctx.aside(m)}; investigate before going on")
    if len(members) != 1:
        raise EtcdwardenError(f"{_where(m)} lists {len(members)} members after {FORCE_NEW_CLUSTER}, expected itself "
                              "alone")
    ctx.state.doc["revision"] = revision
    return {"revision": revision}


# -- the other members: moved aside, re-added from empty -----------------------------------------
async def move_aside(ctx: QuorumContext) -> dict[str, Any]:
    for m in ctx.others:
        host = ctx.runtimes[m.name].host
        if ctx.state.member(m.name).get("moved"):
            continue
        aside = ctx.aside(m)
        if await host.exists(m.data_dir):
            if await host.exists(aside):
                raise EtcdwardenError(f"{_where(m)} both {m.data_dir} and {aside} exist; resolve by hand")
            ctx.say(f"{_where(m)} mv {m.data_dir} {aside}")
            await host.rename(m.data_dir, aside)
            ctx.state.set_member(m.name, moved=True, aside=aside)
        elif await host.exists(aside):  # moved by a run that crashed before recording it
            ctx.state.set_member(m.name, moved=True, aside=aside)
        else:
            ctx.state.set_member(m.name, moved=True, aside=None)
    return {}


async def join(ctx: QuorumContext) -> dict[str, Any]:
    joined = [ctx.survivor]
    for m in ctx.others:
        if ctx.state.member(m.name).get("joined"):
            joined.append(m)
            continue
        async with ctx.etcd_client(joined) as c:
            await wait_healthy(c, ctx.endpoints(joined), ctx.opts.timeout)
            ctx.say(f"{_where(m)} member add --learner {m.peer}")
            mid = await add_learner(c, m.peer_urls, ctx.opts.timeout)
            ctx.state.set_member(m.name, member_id=f"{mid:x}")
            ic = initial_cluster(await c.member_list(), mid, m.name)
            rt = ctx.runtimes[m.name]
            await rt.start(Launch(ic, "existing", ctx.token, marker=ctx.tag))
            _notes(ctx, m)
            await wait_caught_up(c, ctx.endpoints([m])[0], ctx.opts.timeout)
            ctx.say(f"{_where(m)} member promote {mid:x}")
            await promote(c, mid, ctx.opts.timeout)
            pid = await rt.wait_serving(ctx.client, ctx.opts.timeout)
            ctx.state.set_member(m.name, joined=True, pid=pid)
        joined.append(m)
    return {}


# -- health, verify ------------------------------------------------------------------------------
async def healthy(ctx: QuorumContext) -> dict[str, Any]:
    async with ctx.etcd_client(ctx.spec.members) as c:
        leader = await wait_healthy(c, ctx.endpoints(ctx.spec.members), ctx.opts.timeout)
    began = ctx.state.doc.get("stop_started_at")
    if began:
        ctx.state.doc["seconds_stop_to_healthy"] = round(time.time() - float(began), 3)
    return {"leader": f"{leader:x}"}


async def serving_problems(ctx: QuorumContext) -> list[str]:
    async with ctx.etcd_client(ctx.spec.members) as c:
        try:
            members = await c.member_list()
        except EtcdError as e:
            return [f"cannot list the members: {e}"]
    problems: list[str] = []
    if len(members) != len(ctx.spec.members):
        problems.append(f"the cluster lists {len(members)} members, the spec {len(ctx.spec.members)}")
    problems += [f"member {m.name or f'{m.ID:x}'} is still a learner" for m in members if m.isLearner]
    for m in ctx.spec.members:
        rec = ctx.state.member(m.name)
        _mid, found = await identity_problems(ctx.client, members, m, rec.get("member_id"))
        problems += found
        rt = ctx.runtimes[m.name]
        if rt.kind == "process" and m.is_local:
            pid = rec.get("pid")
            problems += await asyncio.to_thread(process_problems, m, int(pid) if pid is not None else None)
    return problems


async def verify_step(ctx: QuorumContext) -> dict[str, Any]:
    """Every member serves the recovered data: HashKV and key count equal to the survivor's at its revision."""
    problems = await serving_problems(ctx)
    if problems:
        raise EtcdwardenError("the recovered cluster is not served as the spec says: " + "; ".join(problems))
    m = ctx.survivor
    revision = int(ctx.state.doc["revision"])
    compacted = int(ctx.state.member(m.name).get("compact_revision") or 0) >= revision
    async with ctx.etcd_client(ctx.spec.members) as c:
        mine = await check_member(c, ctx.endpoints([m])[0], revision, hash_current=compacted)
        check = await verify_cluster(c, ctx.endpoints(ctx.spec.members), revision, mine.keys,
                                     compacted_at_expected=compacted)
    if not check.ok:
        raise EtcdwardenError("the members do not hold the same data: " + "; ".join(check.problems))
    return {"check": check.as_json()}


async def report(ctx: QuorumContext) -> dict[str, Any]:
    return {}


STEP_FUNCS = {"stop": stop, "copy": copy, "force-new-cluster": force_new_cluster, "restart": restart,
              "move-aside": move_aside, "join": join, "wait-healthy": healthy, "verify": verify_step,
              "report": report}


async def run_step(ctx: QuorumContext, step: str) -> dict[str, Any]:
    return await STEP_FUNCS[step](ctx)


# -- the plan (--dry-run) ------------------------------------------------------------------------
def step_commands(ctx: QuorumContext, step: str) -> list[str]:
    s, others = ctx.survivor, ctx.others
    if step == "preflight":
        return ["check that each member's runtime can control it: " + ", ".join(repr(r) for r in ctx.runtimes.values()),
                "read every local data dir offline (backend structure and meta, WAL); the survivor must pass the "
                "structure check and no other member may hold a higher term/index",
                "refuse while the cluster still has quorum; refuse data dirs in use by unmanaged processes"]
    if step == "stop":
        return [f"{_where(m)} {c}" for m in ctx.spec.members for c in ctx.runtimes[m.name].commands("stop")]
    if step == "copy":
        return [f"{_where(s)} cp -a {s.data_dir} {_restoring(ctx, s)}; read the copy back (same revision and "
                "position)",
                f"{_where(s)} mv {s.data_dir} {ctx.aside(s)}   (the original, kept exactly as it was)",
                f"{_where(s)} mv {_restoring(ctx, s)} {s.data_dir}"]
    if step == "force-new-cluster":
        return [f"{_where(s)} {c}" for c in ctx.runtimes[s.name].commands("start", _own_launch(ctx, s, True))] + \
            [f"wait until {s.name} serves alone and is healthy"]
    if step == "restart":
        return [f"{_where(s)} {c}" for c in ctx.runtimes[s.name].commands("stop")] + \
            [f"{_where(s)} {c}" for c in ctx.runtimes[s.name].commands("start", _own_launch(ctx, s, False))] + \
            ["record the revision it serves (never below what its data dir held)"]
    if step == "move-aside":
        return [f"{_where(m)} mv {m.data_dir} {ctx.aside(m)}   (if it exists; never deleted)" for m in others]
    if step == "join":
        out = []
        names = [s]
        for m in others:
            names.append(m)
            ic = ",".join(f"{x.name}={u}" for x in names for u in x.peer_urls)
            out.append(f"member add --learner --peer-urls {m.peer}")
            out += [f"{_where(m)} {c}" for c in ctx.runtimes[m.name].commands("start", Launch(ic, "existing",
                                                                                             ctx.token))]
            out.append(f"wait until {m.name} caught up with the leader; member promote (retried with backoff)")
        return out
    if step == "wait-healthy":
        return ["wait for a leader and every member healthy: " + ", ".join(m.client_urls[0] for m in ctx.spec.members)]
    if step == "verify":
        return ["every member answers on its client URL as itself, from the live PID recorded (process runtime)",
                f"HashKV and key count at the revision {s.name} serves after the restart equal on every member"]
    return [f"print the report; the state stays in {ctx.state.path}"]
