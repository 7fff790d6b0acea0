"""``systemd``: ``systemctl stop|start UNIT``; running means ``systemctl is-active UNIT`` succeeds.

The unit's own configuration (flags or ``EnvironmentFile``) starts etcd; on a restored data directory
etcd takes its membership from the WAL, so the unit needs no change after ``restore cluster``.
"""

from __future__ import annotations

from etcdwarden.restore.runtimes.base import Launch, Runtime


class SystemdRuntime(Runtime):
    kind = "systemd"

    async def stop(self) -> None:
        (await self.host.run(["systemctl", "stop", self.member.unit], timeout=180)).check()

    async def start(self, launch: Launch) -> None:
        (await self.host.run(["systemctl", "start", self.member.unit], timeout=180)).check()

    async def is_running(self) -> bool:
        r = await self.host.run(["systemctl", "is-active", "--quiet", self.member.unit])
        return r.code == 0

    async def check(self) -> list[str]:
        r = await self.host.run(["systemctl", "show", "--property=LoadState", "--value", self.member.unit])
        if r.code != 0:
            return [f"member {self.member.name}: systemctl on {self.host.name} failed: "
                    f"{(r.stderr or r.stdout).strip()[:200]}"]
        if r.stdout.strip() != "loaded":
            return [f"member {self.member.name}: unit {self.member.unit} is not loaded on {self.host.name} "
                    f"(LoadState={r.stdout.strip() or '?'})"]
        return []

    def commands(self, action: str, launch: Launch | None = None) -> list[str]:
        return [f"systemctl {action} {self.member.unit}" + ("   # then wait until is-active fails" if action == "stop"
                                                           else "")]
