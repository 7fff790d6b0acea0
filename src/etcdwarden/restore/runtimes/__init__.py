"""Member runtimes (one module each behind :class:`~.base.Runtime`) and the registry that picks one."""

from __future__ import annotations

from etcdwarden.restore.runtimes.base import Host, Launch, LocalHost, Runtime
from etcdwarden.restore.runtimes.process import ProcessRuntime
from etcdwarden.restore.runtimes.static_pod import StaticPodRuntime
from etcdwarden.restore.runtimes.systemd import SystemdRuntime
from etcdwarden.restore.spec import MemberSpec

RUNTIMES: dict[str, type[Runtime]] = {
    ProcessRuntime.kind: ProcessRuntime,
    SystemdRuntime.kind: SystemdRuntime,
    StaticPodRuntime.kind: StaticPodRuntime,
}


def make_runtime(member: MemberSpec, host: Host) -> Runtime:
    return RUNTIMES[member.runtime](member, host)


__all__ = ["RUNTIMES", "Host", "Launch", "LocalHost", "Runtime", "make_runtime"]
