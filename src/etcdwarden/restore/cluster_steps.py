"""The steps of ``restore cluster`` (see :mod:`.cluster`), each idempotent so that a rerun can redo it.

Per-member progress is written to the state file as it happens: a member already moved aside,
restored, started or joined is never handled twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from etcdwarden.errors import EtcdError, EtcdwardenError
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.restore import etcdutl as eu
from etcdwarden.restore.backup import Backup, SnapshotFacts, snapshot_facts, verify
from etcdwarden.restore.checks import check_versions, refuse
from etcdwarden.restore.cluster_context import Context
from etcdwarden.restore.datadir import PRE_RESTORE, RESTORING
from etcdwarden.restore.health import verify_cluster, wait_healthy
from etcdwarden.restore.inuse import local_users, refusal, users
from etcdwarden.restore.membership import add_learner, initial_cluster, promote, wait_caught_up
from etcdwarden.restore.runtimes.base import Host, Launch, Runtime
from etcdwarden.restore.serving import identity_problems, process_problems
from etcdwarden.restore.spec import MemberSpec
from etcdwarden.snapshot.source import open_snapshot


def _aside(m: MemberSpec, tag: str) -> str:
    return f"{m.data_dir}{PRE_RESTORE}{tag}"


def _restoring(m: MemberSpec, tag: str) -> str:
    return f"{m.data_dir}{RESTORING}{tag}"


def _where(m: MemberSpec) -> str:
    return f"[{m.name}@{m.host}]"


# -- preflight -----------------------------------------------------------------------------------
def _facts(b: Backup, skip_hash_check: bool, work_dir: Path) -> dict[str, int]:
    verify(b, skip_hash_check, work_dir)
    with open_snapshot(b.snapshot, b.identity, work_dir) as plain:
        f = snapshot_facts(plain)
    return {"revision": f.revision, "keys": f.live_keys, "kubernetes_keys": f.kubernetes_keys,
            "compact_revision": f.compact_revision}


async def preflight(ctx: Context) -> dict[str, Any]:
    facts = await asyncio.to_thread(_facts, ctx.backup, ctx.opts.skip_hash_check, ctx.work_dir)
    ctx.state.doc["facts"] = facts
    problems: list[str] = []
    for rt in ctx.runtimes.values():
        problems += await rt.check()
    forced = "in-use" in ctx.opts.forces
    for name, rt in ctx.runtimes.items():
        m = rt.member
        if not m.is_local:
            tool = m.etcdutl or "etcdutl"
            r = await rt.host.run([tool, "version"])
            if r.code != 0:
                problems.append(f"member {name}: `{tool} version` failed on {m.host}: {r.stderr.strip()[:200]}")
            else:
                ver = r.stdout.split("etcdutl version:")[-1].split()[0] if "etcdutl version:" in r.stdout else None
                if ver:
                    ctx.warnings += check_versions(ctx.backup.server_version, ver, None, ctx.opts.forces)
            if ctx.bump and name in {t.name for t in ctx.restore_targets()}:
                problems += await remote_bump_problems(rt.host, tool, name)
            continue
        if rt.kind == "process":
            managed = rt.managed_pids()
            strangers = [u for u in await asyncio.to_thread(local_users, m.data_path)
                         if u.pid is not None and u.pid not in managed]
            if strangers and not forced:
                raise refuse("in-use", f"member {name}: {m.data_dir} is in use by "
                             + "; ".join(str(u) for u in strangers) + f", which its runtime (process, pid file "
                             f"{m.pid_path}) does not manage: stopping the member would not stop them")
    if problems:
        raise EtcdwardenError("pre-flight failed: " + "; ".join(problems))
    await _cluster_id_check(ctx)
    if facts["kubernetes_keys"] and not ctx.bump:
        ctx.warnings.append("the snapshot holds Kubernetes keys and the revision is NOT bumped: restart every "
                            "kube-apiserver after the restore (their watch caches hold newer resourceVersions)")
    return {"facts": facts}


async def remote_bump_problems(host: Host, tool: str, name: str) -> list[str]:
    """The bump flags must exist in the etcdutl that restores ``name`` on ``host`` too (not only in ours)."""
    r = await host.run([tool, "snapshot", "restore", "--help"])
    text = r.stdout + r.stderr
    if "--bump-revision" in text and "--mark-compacted" in text:
        return []
    return [f"member {name}: {tool} on {host.name} has no --bump-revision/--mark-compacted (etcdutl 3.5.10+ and 3.6 "
            "have): set the member's etcdutl in the spec to such an etcdutl, or restore without --bump-revision"]


async def _cluster_id_check(ctx: Context) -> None:
    want = ctx.backup.cluster_id
    if not want:
        return
    cfg = ctx.client.with_endpoints(ctx.endpoints(ctx.spec.members))
    async with EtcdClient(dataclasses.replace(cfg, dial_timeout=0.5)) as c:
        for ep in cfg.endpoints:
            try:
                st = await c.status(ep, timeout=1.0)
            except EtcdError:
                continue
            have = f"{st.header.cluster_id:x}"
            if have != want:
                ctx.warnings.append(f"the backup comes from cluster {want} but {ep.raw} belongs to cluster {have}: "
                                    "restoring replaces that cluster's data with another cluster's")
            return


# -- stop, move aside ----------------------------------------------------------------------------
async def stop(ctx: Context) -> dict[str, Any]:
    ctx.state.doc.setdefault("stop_started_at", time.time())
    for name, rt in ctx.runtimes.items():
        await rt.stop()
        await rt.wait(False, ctx.opts.timeout)
        ctx.state.set_member(name, stopped=True)
    for name, rt in ctx.runtimes.items():
        m = rt.member
        if m.is_local:
            found = await users(m.data_path, ctx.client)
            ctx.warnings += refusal(f"member {name}: its runtime ({rt.kind}) is stopped but {m.data_dir}", found,
                                    ctx.opts.forces, "Is data_dir really the directory this member's etcd runs on? "
                                    "Stop what uses it, then rerun")
    return {}


async def move_aside(ctx: Context) -> dict[str, Any]:
    for name, rt in ctx.runtimes.items():
        m, host = rt.member, rt.host
        if ctx.state.member(name).get("moved"):
            continue
        aside = _aside(m, ctx.tag)
        if await host.exists(m.data_dir):
            if await host.exists(aside):
                raise EtcdwardenError(f"{_where(m)} both {m.data_dir} and {aside} exist; resolve by hand")
            owner = await host.owner(m.data_dir)
            await host.rename(m.data_dir, aside)
            ctx.state.set_member(name, moved=True, aside=aside, owner=owner)
        elif await host.exists(aside):  # moved by a run that crashed before recording it
            ctx.state.set_member(name, moved=True, aside=aside, owner=await host.owner(aside))
        else:
            ctx.state.set_member(name, moved=True, aside=None, owner=None)
    return {}


# -- restore -------------------------------------------------------------------------------------
def _args(ctx: Context, m: MemberSpec) -> eu.RestoreArgs:
    return eu.RestoreArgs(m.name, ctx.restore_initial_cluster(), m.peer, ctx.token, ctx.bump,
                          ctx.opts.skip_hash_check)


async def restore(ctx: Context) -> dict[str, Any]:
    async def one(m: MemberSpec, plain: Path) -> None:
        if ctx.state.member(m.name).get("restored"):
            return
        await _restore_one(ctx, m, ctx.runtimes[m.name].host, plain)
        ctx.state.set_member(m.name, restored=True)

    with open_snapshot(ctx.backup.snapshot, ctx.backup.identity, ctx.work_dir) as plain:
        # every member at once: on separate hosts this divides the time by the member count
        results = await asyncio.gather(*(one(m, plain) for m in ctx.restore_targets()), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return {}


async def _restore_one(ctx: Context, m: MemberSpec, host: Host, plain: Path) -> None:
    restoring = _restoring(m, ctx.tag)
    if await host.exists(restoring):
        await host.remove_restoring(restoring)  # half-written by a crashed run
    if await host.exists(m.data_dir):
        if await host.exists(f"{m.data_dir}/member/snap/db"):
            return  # renamed into place by a run that crashed before recording it
        raise EtcdwardenError(f"{_where(m)} {m.data_dir} appeared after it was moved aside; move it away and rerun")
    snap, tool = str(plain), str(ctx.etcdutl.path)
    if not host.is_local:
        snap, tool = f"{m.data_dir}.snapshot-{ctx.tag}.db", m.etcdutl or "etcdutl"
        await host.upload(plain, snap)
    try:
        ctx.say(f"{_where(m)} etcdutl snapshot restore into {restoring}")
        (await host.run(_args(ctx, m).command(tool, snap, restoring), timeout=3600)).check()
        await host.give(restoring, ctx.state.member(m.name).get("owner"), 0o700)
        await host.rename(restoring, m.data_dir)
    except BaseException:
        if await host.exists(restoring):
            await host.remove_restoring(restoring)
        raise
    finally:
        if not host.is_local:
            await host.run(["rm", "-f", snap])


# -- start, join, health, verify -----------------------------------------------------------------
def _launch(ctx: Context, initial: str, state: str) -> Launch:
    return Launch(initial, state, ctx.token, marker=ctx.tag)


def _notes(ctx: Context, rt: Runtime) -> None:
    """What a runtime did besides starting (adopting or stopping a leftover of an interrupted run)."""
    for n in rt.notes:
        ctx.say(n)
        ctx.warnings.append(n)
    rt.notes.clear()


async def _serving(ctx: Context, m: MemberSpec) -> None:
    """Record the member started only once its process serves it (never a PID that is not alive and serving)."""
    pid = await ctx.runtimes[m.name].wait_serving(ctx.client, ctx.opts.timeout)
    ctx.state.set_member(m.name, started=True, pid=pid)


async def start(ctx: Context) -> dict[str, Any]:
    targets = ctx.restore_targets()
    for m in targets:
        rt = ctx.runtimes[m.name]
        await rt.start(_launch(ctx, ctx.restore_initial_cluster(), "new"))
        _notes(ctx, rt)
    for m in targets:
        await _serving(ctx, m)
    return {}


async def join(ctx: Context) -> dict[str, Any]:
    members = ctx.spec.members
    for i, m in enumerate(members[1:], start=1):
        if ctx.state.member(m.name).get("joined"):
            continue
        async with ctx.etcd_client(members[:i]) as c:
            await wait_healthy(c, ctx.endpoints(members[:i]), ctx.opts.timeout)
            ctx.say(f"{_where(m)} member add --learner {m.peer}")
            mid = await add_learner(c, m.peer_urls, ctx.opts.timeout)
            ctx.state.set_member(m.name, member_id=f"{mid:x}")
            ic = initial_cluster(await c.member_list(), mid, m.name)
            rt = ctx.runtimes[m.name]
            await rt.start(_launch(ctx, ic, "existing"))
            _notes(ctx, rt)
            ep = ctx.endpoints([m])[0]
            await wait_caught_up(c, ep, ctx.opts.timeout)
            await promote(c, mid, ctx.opts.timeout)
            await _serving(ctx, m)
            ctx.state.set_member(m.name, joined=True)
    return {}


async def healthy(ctx: Context) -> dict[str, Any]:
    async with ctx.etcd_client(ctx.spec.members) as c:
        leader = await wait_healthy(c, ctx.endpoints(ctx.spec.members), ctx.opts.timeout)
        for m in await c.member_list():
            for spec_m in ctx.spec.members:
                if set(m.peerURLs) & set(spec_m.peer_urls):
                    ctx.state.member(spec_m.name)["member_id"] = f"{m.ID:x}"
    began = ctx.state.doc.get("stop_started_at")
    if began:
        ctx.state.doc["seconds_stop_to_healthy"] = round(time.time() - float(began), 3)
    return {"leader": f"{leader:x}"}


async def verify_step(ctx: Context) -> dict[str, Any]:
    facts = ctx.state.doc["facts"]
    f = SnapshotFacts(int(facts["revision"]), int(facts["keys"]), int(facts["kubernetes_keys"]),
                      int(facts.get("compact_revision") or 0))
    expected = f.served_revision(ctx.bump)
    problems = await serving_problems(ctx)
    if problems:
        raise EtcdwardenError("the restored cluster is not served by the members' own processes: "
                              + "; ".join(problems))
    async with ctx.etcd_client(ctx.spec.members) as c:
        # the bump's marker (an empty key at the bumped revision) is neither a live key of the snapshot nor
        # counted by a range from \x00: the key count is the backup's with or without a bump
        check = await verify_cluster(c, ctx.endpoints(ctx.spec.members), expected, f.live_keys,
                                     compacted_at_expected=ctx.bump > 0 or f.compact_revision >= expected)
    if not check.ok:
        raise EtcdwardenError("the restored cluster does not hold the backup's data: " + "; ".join(check.problems))
    return {"check": check.as_json()}


async def serving_problems(ctx: Context) -> list[str]:
    """Every member answers as itself on its URLs, and (process runtime) from the live PID the restore recorded."""
    async with ctx.etcd_client(ctx.spec.members) as c:
        try:
            members = await c.member_list()
        except EtcdError as e:
            return [f"cannot list the members: {e}"]
    problems: list[str] = []
    for m in ctx.spec.members:
        rec = ctx.state.member(m.name)
        _mid, found = await identity_problems(ctx.client, members, m, rec.get("member_id"))
        problems += found
        rt = ctx.runtimes[m.name]
        if rt.kind == "process" and m.is_local:
            pid = rec.get("pid")
            problems += await asyncio.to_thread(process_problems, m, int(pid) if pid is not None else None)
            in_file = next(iter(rt.managed_pids()), None)
            if pid is not None and in_file != pid:
                problems.append(f"member {m.name}: the pid file {m.pid_path} names {in_file}, the restore recorded "
                                f"PID {pid}")
    return problems


async def report(ctx: Context) -> dict[str, Any]:
    return {}


STEP_FUNCS = {"preflight": preflight, "stop": stop, "move-aside": move_aside, "restore": restore, "start": start,
              "join": join, "wait-healthy": healthy, "verify": verify_step, "report": report}


async def run_step(ctx: Context, step: str) -> dict[str, Any]:
    return await STEP_FUNCS[step](ctx)


# -- the plan (--dry-run) ------------------------------------------------------------------------
def step_commands(ctx: Context, step: str) -> list[str]:
    ms, tag = ctx.spec.members, ctx.tag
    b = ctx.backup
    if step == "preflight":
        return [f"verify {b.label}: sha256 of every file, sha256 trailer, bbolt structure; count its keys",
                "check that each member's runtime can control it: " + ", ".join(repr(r) for r in ctx.runtimes.values()),
                f"versions: backup etcd {b.server_version or '?'}, etcdutl {ctx.etcdutl.version}, target etcd "
                f"{ctx.target_version() or '?'}",
                "refuse data dirs in use by processes the runtimes do not manage"]
    if step == "stop":
        return [f"{_where(m)} {c}" for m in ms for c in ctx.runtimes[m.name].commands("stop")]
    if step == "move-aside":
        return [f"{_where(m)} mv {m.data_dir} {_aside(m, tag)}   (if it exists; never deleted)" for m in ms]
    if step == "restore":
        out = []
        for m in ctx.restore_targets():
            tool = str(ctx.etcdutl.path) if m.is_local else (m.etcdutl or "etcdutl")
            out.append(f"{_where(m)} " + " ".join(_args(ctx, m).command(tool, str(b.snapshot), _restoring(m, tag))))
            owner = ctx.state.member(m.name).get("owner") or f"(owner of {m.data_dir})"
            out.append(f"{_where(m)} chmod 0700, chown -R {owner} {_restoring(m, tag)}; "
                       f"mv {_restoring(m, tag)} {m.data_dir}")
        return out
    if step == "start":
        launch = _launch(ctx, ctx.restore_initial_cluster(), "new")
        return [f"{_where(m)} {c}" for m in ctx.restore_targets()
                for c in ctx.runtimes[m.name].commands("start", launch)]
    if step == "join":
        out = []
        for i, m in enumerate(ms[1:], start=1):
            ic = ",".join(f"{x.name}={u}" for x in ms[: i + 1] for u in x.peer_urls)
            out.append(f"member add --learner --peer-urls {m.peer}")
            out += [f"{_where(m)} {c}" for c in ctx.runtimes[m.name].commands("start", Launch(ic, "existing",
                                                                                             ctx.token))]
            out.append(f"wait until {m.name} caught up with the leader; member promote (retried with backoff)")
        return out
    if step == "wait-healthy":
        return ["wait for a leader and every member healthy: " + ", ".join(m.client_urls[0] for m in ms)]
    if step == "verify":
        at = (f"the current revision (the backup's + {ctx.bump} is marked compacted)" if ctx.bump
              else "the backup's revision")
        return ["every member answers on its client URL as itself (name and ID in the member list), from the live "
                "PID the restore recorded, which holds its ports (process runtime)",
                f"HashKV at {at} equal on every member; revision and key count as in the backup"]
    return [f"print the report; the state stays in {ctx.state.path}"]
