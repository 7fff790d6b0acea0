"""``static-pod``: stop by moving the pod manifest out of the kubelet's manifest directory.

Stop: the manifests named in ``also_stop`` (e.g. ``kube-apiserver-pod.yaml``) are moved aside first,
then the etcd manifest; stopped means ``crictl ps --name <container> -q`` lists no container (the
seed procedure). Start: the etcd manifest is moved back first, the others last. Manifests are moved,
never deleted, to ``stopped_dir`` (default ``<manifest dir>/../manifests-stopped``).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from etcdwarden.errors import EtcdwardenError
from etcdwarden.restore.runtimes.base import Launch, Runtime


class StaticPodRuntime(Runtime):
    kind = "static-pod"

    @property
    def manifest(self) -> PurePosixPath:
        return PurePosixPath(self.member.manifest)

    @property
    def stopped_dir(self) -> PurePosixPath:
        if self.member.stopped_dir:
            return PurePosixPath(self.member.stopped_dir)
        return self.manifest.parent.parent / "manifests-stopped"

    def _others(self) -> list[PurePosixPath]:
        return [self.manifest.parent / p if "/" not in p else PurePosixPath(p) for p in self.member.also_stop]

    def _moves(self, action: str) -> list[tuple[str, str]]:
        """(src, dst) renames, in order, for ``stop`` or ``start``."""
        files = [*self._others(), self.manifest]
        out = [(str(f), str(self.stopped_dir / f.name)) for f in files]
        return out if action == "stop" else [(dst, src) for src, dst in reversed(out)]

    async def _move(self, src: str, dst: str) -> None:
        if await self.host.exists(dst) and not await self.host.exists(src):
            return  # already moved (a rerun)
        if not await self.host.exists(src):
            raise EtcdwardenError(f"member {self.member.name}: {src} not found on {self.host.name} (nor {dst})")
        if await self.host.exists(dst):
            raise EtcdwardenError(f"member {self.member.name}: both {src} and {dst} exist; keep one")
        await self.host.rename(src, dst)

    async def stop(self) -> None:
        (await self.host.run(["mkdir", "-p", str(self.stopped_dir)])).check()
        for src, dst in self._moves("stop"):
            await self._move(src, dst)

    async def start(self, launch: Launch) -> None:
        for src, dst in self._moves("start"):
            await self._move(src, dst)

    async def is_running(self) -> bool:
        r = (await self.host.run(["crictl", "ps", "--name", self.member.container, "-q"])).check()
        return bool(r.stdout.strip())

    async def check(self) -> list[str]:
        problems: list[str] = []
        r = await self.host.run(["crictl", "ps", "--name", self.member.container, "-q"])
        if r.code != 0:
            problems.append(f"member {self.member.name}: crictl on {self.host.name} failed: "
                            f"{(r.stderr or r.stdout).strip()[:200]}")
        for src, dst in self._moves("stop"):
            if not await self.host.exists(src) and not await self.host.exists(dst):
                problems.append(f"member {self.member.name}: static pod manifest {src} not found on {self.host.name}")
        return problems

    def commands(self, action: str, launch: Launch | None = None) -> list[str]:
        lines = [f"mkdir -p {self.stopped_dir}"] if action == "stop" else []
        lines += [f"mv {src} {dst}" for src, dst in self._moves(action)]
        if action == "stop":
            lines.append(f"until [ -z \"$(crictl ps --name {self.member.container} -q)\" ]; do sleep 1; done")
        return lines
