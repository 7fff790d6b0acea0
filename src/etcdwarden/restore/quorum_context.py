"""What the steps of ``restore quorum`` share: its options, the context every step works on, its report.

Kept apart from :mod:`.quorum` (which orders and runs the steps) and :mod:`.quorum_steps` (the steps),
as :mod:`.cluster_context` is for ``restore cluster``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.etcd.endpoints import Endpoint, parse_endpoint
from etcdwarden.restore.checks import Forces
from etcdwarden.restore.runtimes.base import Host, Runtime
from etcdwarden.restore.spec import ClusterSpec, MemberSpec
from etcdwarden.restore.state import RestoreState

PRE_QUORUM = ".pre-quorum-"  # a member's data dir moved aside by restore quorum (never deleted)


@dataclass
class QuorumRestoreOptions:
    spec_path: Path
    survivor: str | None = None  # default: the most advanced usable member
    state_path: Path | None = None
    token: str | None = None  # initial-cluster-token handed to the rejoining members (unused by etcd then)
    forces: Forces = field(default_factory=Forces)
    client: ClientConfig | None = None
    crash_after: str | None = None  # test hook: fail on purpose after this step
    timeout: float = 120.0


@dataclass
class QuorumReport:
    state_path: Path
    tag: str
    survivor: str
    revision: int | None
    members: list[dict[str, Any]]
    check: dict[str, Any] | None
    seconds: float | None
    resumed_at: str | None
    warnings: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"state": str(self.state_path), "tag": self.tag, "survivor": self.survivor,
                "revision": self.revision, "members": self.members, "verify": self.check,
                "seconds_stop_to_healthy": self.seconds, "resumed_at": self.resumed_at, "warnings": self.warnings}


@dataclass
class QuorumContext:
    """One run of ``restore quorum``: what every step reads and records (the state file is the memory)."""

    opts: QuorumRestoreOptions
    spec: ClusterSpec
    state: RestoreState
    hosts: dict[str, Host]
    runtimes: dict[str, Runtime]
    client: ClientConfig
    resumed_at: str | None
    dry_run: bool
    progress: Callable[[str], None] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return str(self.state.doc["tag"])

    @property
    def token(self) -> str:
        return str(self.state.doc["token"])

    @property
    def survivor(self) -> MemberSpec:
        return self.spec.member(str(self.state.doc["survivor"]))

    @property
    def others(self) -> list[MemberSpec]:
        name = self.state.doc["survivor"]
        return [m for m in self.spec.members if m.name != name]

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def aside(self, m: MemberSpec) -> str:
        return f"{m.data_dir}{PRE_QUORUM}{self.tag}"

    def endpoints(self, members: list[MemberSpec]) -> list[Endpoint]:
        return [parse_endpoint(m.client_urls[0]) for m in members]

    def etcd_client(self, members: list[MemberSpec]) -> EtcdClient:
        return EtcdClient(self.client.with_endpoints(self.endpoints(members)))

    async def close(self) -> None:
        for h in self.hosts.values():
            await h.close()

    def report(self) -> QuorumReport:
        d = self.state.doc
        members = [{"name": m.name, "runtime": m.runtime, "host": m.host, "data_dir": m.data_dir,
                    "role": "survivor" if m.name == d["survivor"] else "rejoined",
                    "moved_aside": self.state.member(m.name).get("aside"),
                    "member_id": self.state.member(m.name).get("member_id"),
                    "pid": self.state.member(m.name).get("pid")} for m in self.spec.members]
        check = d["steps"].get("verify", {}).get("check")
        return QuorumReport(self.state.path, self.tag, str(d["survivor"]), d.get("revision"), members, check,
                            d.get("seconds_stop_to_healthy"), self.resumed_at, self.warnings)
