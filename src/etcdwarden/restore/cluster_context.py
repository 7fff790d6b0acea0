"""What the steps of ``restore cluster`` share: its options, the context every step works on, its report.

Kept apart from :mod:`.cluster` (which orders and runs the steps) and :mod:`.cluster_steps` (the steps)
so that both import this module and neither imports the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etcdwarden.binaries import binary_version, find_binary
from etcdwarden.errors import BinaryNotFound
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.etcd.endpoints import Endpoint, parse_endpoint
from etcdwarden.repository.base import RepositoryOptions
from etcdwarden.restore import etcdutl as eu
from etcdwarden.restore.backup import Backup
from etcdwarden.restore.checks import Forces
from etcdwarden.restore.health import ClusterCheck, MemberCheck
from etcdwarden.restore.runtimes.base import Host, Runtime
from etcdwarden.restore.spec import ClusterSpec, MemberSpec
from etcdwarden.restore.state import RestoreState
from etcdwarden.snapshot.scratch import existing_dir

if TYPE_CHECKING:
    from etcdwarden.restore.pitr import PointInTime


@dataclass
class ClusterRestoreOptions:
    backup: Path | str  # a directory, manifest or snapshot file, or a repository URL (s3://, gs://, az://, file://)
    spec_path: Path
    mode: str = "all-members"
    backup_id: str | None = None
    identity: Path | None = None
    etcdutl: Path | None = None
    etcd_version: str | None = None
    release: str | None = None
    bump_revision: int = 0
    mark_compacted: bool = False
    token: str | None = None
    state_path: Path | None = None
    forces: Forces = field(default_factory=Forces)
    client: ClientConfig | None = None
    crash_after: str | None = None
    kill_in: str | None = None  # test hook: SIGKILL ourselves inside this step ("start": after the first spawn)
    timeout: float = 120.0
    skip_hash_check: bool = False
    repository_options: RepositoryOptions | None = None  # how to reach an object store (endpoint, credentials)
    restore_resources: bool = False  # OpenShift: the bundled static pod resources and manifests back on each host
    restart_kubelet: bool = False  # then systemctl restart the kubelet on each host
    point: PointInTime | None = None  # --to-revision / --to-time (and the scratch member's etcd, progress)
    no_segments: bool = False  # --no-segments: the full backup alone, even when segments follow it


@dataclass
class ClusterReport:
    state_path: Path
    mode: str
    token: str
    tag: str
    members: list[dict[str, Any]]
    check: ClusterCheck | None
    seconds_stop_to_healthy: float | None
    resumed_at: str | None
    warnings: list[str]
    steps_left: list[str] = field(default_factory=list)  # what the operator must still do (static pod resources)

    def as_json(self) -> dict[str, Any]:
        return {"state": str(self.state_path), "mode": self.mode, "token": self.token, "tag": self.tag,
                "members": self.members, "verify": self.check.as_json() if self.check else None,
                "seconds_stop_to_healthy": self.seconds_stop_to_healthy, "resumed_at": self.resumed_at,
                "warnings": self.warnings, "steps_left": self.steps_left}


@dataclass
class Context:
    """One run of ``restore cluster``: what every step reads and records (the state file is the memory)."""

    opts: ClusterRestoreOptions
    spec: ClusterSpec
    state: RestoreState
    backup: Backup
    etcdutl: eu.Etcdutl
    hosts: dict[str, Host]
    runtimes: dict[str, Runtime]
    client: ClientConfig
    resumed_at: str | None
    dry_run: bool
    progress: Callable[[str], None] | None = None
    warnings: list[str] = field(default_factory=list)
    _target: list[str | None] = field(default_factory=list)

    # -- facts -------------------------------------------------------------------------------
    @property
    def tag(self) -> str:
        return str(self.state.doc["tag"])

    @property
    def token(self) -> str:
        return str(self.state.doc["token"])

    @property
    def bump(self) -> int:
        """The bump every member is restored with: fixed when the restore began (a rerun must not change it)."""
        applied = self.state.doc.get("bump_applied")
        if applied is not None:
            return int(applied)
        return self.opts.bump_revision if self.etcdutl.supports_bump else 0

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def target_version(self) -> str | None:
        if not self._target:
            v = self.opts.etcd_version
            for m in self.spec.members:
                if v is None and m.runtime == "process":
                    with contextlib.suppress(BinaryNotFound):
                        v = binary_version(find_binary("etcd", m.etcd))
            self._target.append(v)
        return self._target[0]

    @property
    def work_dir(self) -> Path:
        """Where decoded copies of the snapshot go (a private directory beside the first local data dir)."""
        local = [m for m in self.restore_targets() if m.is_local]
        return existing_dir(local[0].data_path.parent if local else self.state.path.parent)

    def restore_targets(self) -> list[MemberSpec]:
        ms = self.spec.members
        return ms if self.opts.mode == "all-members" else ms[:1]

    def restore_initial_cluster(self) -> str:
        if self.opts.mode == "all-members":
            return self.spec.initial_cluster
        first = self.spec.members[0]
        return ",".join(f"{first.name}={u}" for u in first.peer_urls)

    def endpoints(self, members: list[MemberSpec]) -> list[Endpoint]:
        return [parse_endpoint(m.client_urls[0]) for m in members]

    def etcd_client(self, members: list[MemberSpec]) -> EtcdClient:
        return EtcdClient(self.client.with_endpoints(self.endpoints(members)))

    async def close(self) -> None:
        for h in self.hosts.values():
            await h.close()

    def report(self) -> ClusterReport:
        d = self.state.doc
        v = d["steps"].get("verify", {}).get("check")
        check = None
        if v:
            check = ClusterCheck([MemberCheck(m["endpoint"], int(m["member_id"], 16), m["revision"], m["hash"],
                                              m["keys"], 0, int(m.get("hash_revision") or 0)) for m in v["members"]],
                                 v["expected_revision"], v["expected_keys"], v["problems"], v["notes"])
        members = [{"name": m.name, "runtime": m.runtime, "host": m.host, "data_dir": m.data_dir,
                    "moved_aside": self.state.member(m.name).get("aside"),
                    "member_id": self.state.member(m.name).get("member_id"),
                    "pid": self.state.member(m.name).get("pid")} for m in self.spec.members]
        return ClusterReport(self.state.path, self.opts.mode, self.token, self.tag, members, check,
                             d.get("seconds_stop_to_healthy"), self.resumed_at, self.warnings)
