"""OpenShift's restore, the part after the snapshot: static pod resources, manifests, the kubelet.

A backup taken with ``--resources-from-static-pod-resources`` bundles the revision directories
``<dir>/<component>-pod-<N>`` of kube-apiserver, kube-controller-manager, kube-scheduler and etcd and
records them (``resources.static_pods``). ``restore cluster --restore-resources`` puts them back on
every member's host (through the member's host: here or over SSH):

* each revision directory is extracted beside its place (``<dir>/<c>-pod-<N>.restoring-<tag>``; the
  bundle checked whole first, :mod:`.tarsafe`), the current one moved aside
  (``<c>-pod-<N>.pre-restore-<tag>``, never deleted) and the restored one renamed into place;
* each component's pod manifest ``<c>-pod.yaml`` from its restored revision replaces the current one:
  where the member's runtime holds it while the member is stopped (the static-pod runtime's
  ``stopped_dir``; its start puts it back live), else in the kubelet's manifest directory. The current
  one goes to ``<manifests_dir>.pre-restore-<tag>/`` (outside the directory the kubelet reads). etcd's own
  manifest is left to the member's runtime, as OpenShift's ``cluster-restore.sh`` restores only the
  kube-apiserver, kube-controller-manager and kube-scheduler manifests from the bundle (etcd's revision
  directory, with its certificates, is restored);
* with ``--restart-kubelet``, after the cluster is verified, ``systemctl restart <kubelet_unit>`` on each host.

Without those flags the restore reports the exact commands left to run (:func:`steps_left`).
Each host directory is recorded in the state file as it is done, so a rerun continues.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from etcdwarden.errors import EtcdwardenError, UsageError
from etcdwarden.format.manifest import StaticPodRevisions
from etcdwarden.restore.cluster_context import Context
from etcdwarden.restore.datadir import PRE_RESTORE, RESTORING
from etcdwarden.restore.runtimes.base import Host
from etcdwarden.restore.runtimes.static_pod import StaticPodRuntime
from etcdwarden.restore.spec import MemberSpec
from etcdwarden.restore.tarsafe import extract, listing, repack
from etcdwarden.snapshot.scratch import scratch_dir
from etcdwarden.snapshot.source import open_snapshot


@dataclass(frozen=True)
class Target:
    """A member's static pod resources directory and kubelet manifest directory on its host."""

    member: MemberSpec
    directory: str
    manifests_dir: str

    @property
    def key(self) -> str:
        return f"{self.member.host.strip().lower()}:{self.directory}"

    @property
    def manifests_key(self) -> str:
        return f"{self.member.host.strip().lower()}:{self.manifests_dir}"


def record(ctx: Context) -> StaticPodRevisions | None:
    m = ctx.backup.manifest
    return m.resources.static_pods if m is not None and m.resources is not None else None


def check_options(ctx: Context) -> None:
    """``--restore-resources`` needs a backup that bundled static pod resources, and its bundle."""
    if not ctx.opts.restore_resources:
        if ctx.opts.restart_kubelet:
            raise UsageError("--restart-kubelet goes with --restore-resources")
        return
    sp = record(ctx)
    if sp is None or not sp.revisions:
        raise UsageError(f"--restore-resources: the backup {ctx.backup.label} records no static pod resources (take "
                         "backups with --resources-from-static-pod-resources)")
    if ctx.backup.resources is None:
        raise UsageError(f"--restore-resources: the resources bundle of {ctx.backup.label} is missing")


def targets(ctx: Context, sp: StaticPodRevisions) -> tuple[list[Target], list[Target]]:
    """The resources directories to restore, and the manifest directories (each once per host; for a manifest
    directory, preferably the member whose static-pod runtime holds manifests while it is stopped)."""
    dirs: dict[str, Target] = {}
    manifests: dict[str, Target] = {}
    for m in ctx.spec.members:
        t = Target(m, m.static_pod_resources or sp.directory,
                   m.manifests_dir or str(PurePosixPath(m.manifest).parent))
        dirs.setdefault(t.key, t)
        cur = manifests.get(t.manifests_key)
        if cur is None or (m.runtime == "static-pod" and cur.member.runtime != "static-pod"):
            manifests[t.manifests_key] = t
    return list(dirs.values()), list(manifests.values())


def _prefix(sp: StaticPodRevisions, component: str, revision: int) -> str:
    """Where the revision directory is inside the bundle (its recorded path, without the leading slash)."""
    return f"{sp.directory.strip('/')}/{component}-pod-{revision}"


def _stopped_path(ctx: Context, m: MemberSpec, name: str) -> str | None:
    rt = ctx.runtimes[m.name]
    return str(rt.stopped_dir / name) if isinstance(rt, StaticPodRuntime) else None


def _manifest_name(m: MemberSpec, component: str) -> str | None:
    """The file name of ``component``'s manifest on ``m``'s host; ``None`` for etcd's (its runtime's business)."""
    return None if component == "etcd" else f"{component}-pod.yaml"


# -- doing it ------------------------------------------------------------------------------------
@dataclass
class HostJob:
    """Putting resources back on one host: where from, and where progress is recorded (``done``, then ``save``)."""

    host: Host
    bundle: Path  # the plain (decrypted) tar.gz
    label: str  # the bundle's name, for messages
    tag: str
    work_dir: Path  # where a part for a remote host is packed
    done: dict[str, str]
    save: Callable[[], None]
    say: Callable[[str], None]


async def put_directory(job: HostJob, key: str, prefix: str, dest: str) -> None:
    """The bundle's directory ``prefix`` at ``dest`` on the host; the current ``dest`` moved aside first."""
    host = job.host
    if job.done.get(key) == "done":
        return
    staging, aside = f"{dest}{RESTORING}{job.tag}", f"{dest}{PRE_RESTORE}{job.tag}"
    if job.done.get(key) == "aside" and await host.exists(dest):
        job.done[key] = "done"  # renamed into place by a run that crashed before recording it
        job.save()
        return
    if await host.exists(staging):
        await host.remove_restoring(staging)  # half-extracted by a crashed run
    job.say(f"[{host.name}] {prefix} -> {dest}")
    if host.is_local:
        await asyncio.to_thread(extract, job.bundle, prefix, Path(staging), job.label)
    else:
        with scratch_dir(job.work_dir) as scratch:
            part = scratch / "part.tar.gz"
            await asyncio.to_thread(repack, job.bundle, prefix, part, job.label)
            remote = f"{staging}.tar.gz"
            await host.upload(part, remote)
            try:
                (await host.run(["mkdir", "-m", "700", "--", staging])).check()
                (await host.run(["tar", "-xzpf", remote, "-C", staging, "--no-same-owner"], timeout=600)).check()
            finally:
                await host.run(["rm", "-f", "--", remote])
    if job.done.get(key) != "aside" and await host.exists(dest):
        if await host.exists(aside):
            raise EtcdwardenError(f"[{host.name}] both {dest} and {aside} exist; resolve by hand")
        await host.rename(dest, aside)
    job.done[key] = "aside"
    job.save()
    await host.rename(staging, dest)
    job.done[key] = "done"
    job.save()


async def put_manifest(job: HostJob, key: str, src: str, place: str, aside_dir: str) -> bool:
    """Copy the restored manifest ``src`` to ``place``, the current one moved into ``aside_dir`` first.

    ``False`` (nothing changed) when ``src`` is not there.
    """
    host = job.host
    if job.done.get(key) == "done":
        return True
    if not await host.exists(src):
        return False
    name = PurePosixPath(place).name
    aside = f"{aside_dir}/{name}"
    if job.done.get(key) != "aside" and await host.exists(place):
        (await host.run(["mkdir", "-p", "--", aside_dir])).check()
        await host.rename(place, aside)
    job.done[key] = "aside"
    job.save()
    # hidden: the kubelet reads every other file of its manifest directory as a pod to run
    tmp = str(PurePosixPath(place).parent / f".{name}{RESTORING}{job.tag}")
    (await host.run(["cp", "--", src, tmp])).check()
    if await host.exists(place):
        await host.rename(place, f"{aside}.{job.tag}")  # placed by a crashed run: keep it too, never overwrite
    await host.rename(tmp, place)
    job.done[key] = "done"
    job.save()
    return True


async def restore_resources(ctx: Context) -> dict[str, Any]:
    sp = record(ctx)
    assert sp is not None and ctx.backup.resources is not None
    progress: dict[str, dict[str, str]] = ctx.state.doc.setdefault("static_pods", {})
    label = ctx.backup.resources.name
    with open_snapshot(ctx.backup.resources, ctx.backup.identity, ctx.work_dir) as bundle:
        await asyncio.to_thread(check_bundle_file, bundle, sp, label)  # refuse a bad bundle before anything
        dirs, manifests = targets(ctx, sp)
        for t in dirs:
            job = HostJob(ctx.runtimes[t.member.name].host, bundle, label, ctx.tag, ctx.work_dir,
                          progress.setdefault(t.key, {}), ctx.state.save, ctx.say)
            for c, n in sp.revisions.items():
                await put_directory(job, f"dir:{c}", _prefix(sp, c, n), f"{t.directory}/{c}-pod-{n}")
        for t in manifests:
            job = HostJob(ctx.runtimes[t.member.name].host, bundle, label, ctx.tag, ctx.work_dir,
                          progress.setdefault(t.manifests_key, {}), ctx.state.save, ctx.say)
            for c, n in sp.revisions.items():
                name = _manifest_name(t.member, c)
                if name is None:
                    continue
                live = f"{t.manifests_dir}/{name}"
                stopped = _stopped_path(ctx, t.member, name)
                place = stopped if stopped is not None and await job.host.exists(stopped) else live
                src = f"{t.directory}/{c}-pod-{n}/{c}-pod.yaml"
                if not await put_manifest(job, f"manifest:{c}", src, place, f"{t.manifests_dir}{PRE_RESTORE}{ctx.tag}"):
                    ctx.warnings.append(f"[{t.member.host}] the restored {c}-pod-{n} holds no {c}-pod.yaml: its "
                                        "manifest was left as it is")
    return {"directories": [t.key for t in dirs], "manifests": [t.manifests_key for t in manifests]}


def check_bundle_file(bundle: Path, sp: StaticPodRevisions, label: str) -> None:
    """The whole bundle is safe to extract, and holds every revision directory the manifest records."""
    names = {m.name.rstrip("/") for m in listing(bundle, label)}
    for c, n in sp.revisions.items():
        prefix = _prefix(sp, c, n)
        if prefix not in names and not any(x.startswith(prefix + "/") for x in names):
            raise EtcdwardenError(f"{label} does not hold {prefix}/, which its manifest records: the bundle is not "
                                  "the one this backup wrote")


def check_bundle(ctx: Context) -> None:
    """Preflight of ``--restore-resources``: refuse a bad bundle before anything is changed."""
    sp = record(ctx)
    if not ctx.opts.restore_resources or sp is None or ctx.backup.resources is None:
        return
    with open_snapshot(ctx.backup.resources, ctx.backup.identity, ctx.work_dir) as bundle:
        check_bundle_file(bundle, sp, ctx.backup.resources.name)


async def restart_kubelet(ctx: Context) -> dict[str, Any]:
    done: list[str] = ctx.state.doc.setdefault("kubelet_restarted", [])
    for m in _kubelet_hosts(ctx):
        key = f"{m.host}:{m.kubelet_unit}"
        if key in done:
            continue
        ctx.say(f"[{m.host}] systemctl restart {m.kubelet_unit}")
        (await ctx.runtimes[m.name].host.run(["systemctl", "restart", m.kubelet_unit], timeout=180)).check()
        done.append(key)
        ctx.state.save()
    return {}


def _kubelet_hosts(ctx: Context) -> list[MemberSpec]:
    seen: dict[str, MemberSpec] = {}
    for m in ctx.spec.members:
        seen.setdefault(f"{m.host.strip().lower()}:{m.kubelet_unit}", m)
    return list(seen.values())


# -- saying it -----------------------------------------------------------------------------------
def commands(ctx: Context, kubelet: bool = True) -> list[str]:
    """The exact commands that put the static pod resources and manifests back on every host."""
    sp = record(ctx)
    if sp is None:
        return []
    b = ctx.backup.resources
    bundle = str(b) if b is not None else "<the resources bundle>"
    strip = len(PurePosixPath(sp.directory.strip("/")).parts)
    tag = ctx.tag
    out: list[str] = []
    dirs, manifests = targets(ctx, sp)
    for t in dirs:
        w = f"[{t.member.name}@{t.member.host}]"
        src = bundle
        if not t.member.is_local:
            src = f"/root/{Path(bundle).name}"
            out.append(f"scp {shlex.quote(bundle)} {t.member.host}:{src}")
        if src.endswith(".age"):
            plain = src[: -len(".age")]
            out.append(f"{w} age -d -i IDENTITY -o {shlex.quote(plain)} {shlex.quote(src)}")
            src = plain
        for c, n in sp.revisions.items():
            d = f"{t.directory}/{c}-pod-{n}"
            out.append(f"{w} mv {d} {d}{PRE_RESTORE}{tag}   (if it exists)")
            out.append(f"{w} tar -xzpf {shlex.quote(src)} -C {t.directory} --strip-components={strip} "
                       f"{_prefix(sp, c, n)}")
    for t in manifests:
        w = f"[{t.member.name}@{t.member.host}]"
        aside = f"{t.manifests_dir}{PRE_RESTORE}{tag}"
        for c, n in sp.revisions.items():
            name = _manifest_name(t.member, c)
            if name is None:
                continue
            live = f"{t.manifests_dir}/{name}"
            out.append(f"{w} mkdir -p {aside} && mv {live} {aside}/   (if it exists); "
                       f"cp {t.directory}/{c}-pod-{n}/{c}-pod.yaml {live}")
    return out + (kubelet_commands(ctx) if kubelet else [])


def kubelet_commands(ctx: Context) -> list[str]:
    return [f"[{m.host}] systemctl restart {m.kubelet_unit}" for m in _kubelet_hosts(ctx)]


def steps_left(ctx: Context) -> list[str]:
    """What the restore did not do and the operator must (empty when it did all of it)."""
    if record(ctx) is None:
        return []
    if not ctx.opts.restore_resources:
        return ["the backup holds OpenShift's static pod resources; put them back (or rerun with "
                "--restore-resources --restart-kubelet):", *commands(ctx)]
    if not ctx.opts.restart_kubelet:
        return ["restart the kubelet on every host so that it runs the restored static pods (or pass "
                "--restart-kubelet):", *kubelet_commands(ctx)]
    return []
