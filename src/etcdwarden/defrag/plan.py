"""Before a rolling defragmentation: who the members are, whether they are healthy, what to target.

Health here differs from ``endpoint health`` on purpose: a NOSPACE alarm does not make a member
unhealthy (defragmentation is how it gets cleared), a CORRUPT alarm does. A member is healthy when
it answers Status and a linearizable read through raft.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from etcdwarden.errors import EtcdError, PermissionDenied, SafetyRefusal, UsageError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient, member_endpoint
from etcdwarden.etcd.endpoints import Endpoint
from etcdwarden.inspect import ALARM_NAMES


@dataclass
class MemberCheck:
    """One member's answer to Status and to a linearizable read."""

    endpoint: Endpoint
    status: pb.StatusResponse | None = None
    error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.status is not None and self.error is None

    @property
    def member_id(self) -> int:
        return int(self.status.header.member_id) if self.status is not None else 0

    @property
    def leader_id(self) -> int:
        return int(self.status.leader) if self.status is not None else 0

    @property
    def is_leader(self) -> bool:
        return self.status is not None and self.leader_id != 0 and self.leader_id == self.member_id


@dataclass
class Target:
    """A member to defragment (one per member ID, in the order the user gave)."""

    endpoint: Endpoint
    member_id: int = 0
    name: str = ""
    is_learner: bool = False
    error: str | None = None  # unreachable at planning time


@dataclass
class ClusterView:
    voters: dict[int, pb.Member] = field(default_factory=dict)  # member ID → member
    voter_endpoints: dict[int, Endpoint] = field(default_factory=dict)
    checks: dict[str, MemberCheck] = field(default_factory=dict)  # endpoint target → check
    alarms: list[pb.AlarmMember] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # reasons to refuse (overridable with --force)

    @property
    def healthy_voters(self) -> int:
        return sum(1 for mid, ep in self.voter_endpoints.items()
                   if (c := self.checks.get(ep.target)) is not None and c.healthy and c.member_id == mid)

    @property
    def quorum_needed(self) -> int:
        return len(self.voters) // 2 + 1

    def name_of(self, member_id: int) -> str:
        m = self.voters.get(member_id)
        return (m.name if m is not None and m.name else "") or f"{member_id:x}"


async def check_member(client: EtcdClient, ep: Endpoint, timeout: float | None = None) -> MemberCheck:
    """Status, then a linearizable read of key ``health`` on that member (etcdctl's health probe)."""
    try:
        status = await client.status(ep, timeout)
    except EtcdError as e:
        return MemberCheck(ep, None, e.detail)
    try:
        await client.range_on(ep, pb.RangeRequest(key=b"health"), timeout)
    except PermissionDenied:
        pass  # served through raft; the user may not read that key
    except EtcdError as e:
        return MemberCheck(ep, status, e.detail)
    return MemberCheck(ep, status, None)


def alarm_name(alarm: int) -> str:
    return ALARM_NAMES.get(int(alarm), str(alarm))


async def survey(client: EtcdClient, cluster: bool) -> ClusterView:
    """Members, their health, alarms and the targets; problems listed, nothing refused yet."""
    view = ClusterView()
    try:
        members = await client.member_list(linearizable=False)
    except EtcdError as e:
        raise SafetyRefusal(f"cannot list the cluster's members ({e}); is any endpoint reachable?",
                            force_flag=None) from e
    learners: dict[int, pb.Member] = {}
    for m in members:
        if m.isLearner:
            learners[int(m.ID)] = m
            continue
        view.voters[int(m.ID)] = m
        ep = member_endpoint(m)
        if ep is None:
            view.problems.append(f"voting member {m.name or f'{m.ID:x}'} has not started (no client URL)")
        else:
            view.voter_endpoints[int(m.ID)] = ep

    candidates = list(view.voter_endpoints.values()) if cluster else list(client.config.endpoints)
    to_check = {ep.target: ep for ep in [*view.voter_endpoints.values(), *candidates]}
    checks = await asyncio.gather(*(check_member(client, ep) for ep in to_check.values()))
    view.checks = {c.endpoint.target: c for c in checks}

    for mid, ep in view.voter_endpoints.items():
        c = view.checks[ep.target]
        if not c.healthy:
            view.problems.append(f"member {view.name_of(mid)} ({ep.raw}) is unhealthy: {c.error}")
        elif c.member_id != mid:
            view.problems.append(f"{ep.raw} answers as member {c.member_id:x}, not {mid:x} as the member list says")

    try:
        view.alarms = await client.alarms()
    except EtcdError as e:
        view.problems.append(f"cannot list alarms: {e.detail}")
    for a in view.alarms:
        if int(a.alarm) != pb.NOSPACE:
            view.problems.append(f"alarm {alarm_name(a.alarm)} is active on member {view.name_of(int(a.memberID))}")

    healthy, voters = view.healthy_voters, len(view.voters)
    if voters and healthy < view.quorum_needed:
        view.problems.append(
            f"the cluster lacks quorum ({healthy} of {voters} voting members healthy, {view.quorum_needed} needed)"
        )

    seen: set[int] = set()
    for ep in candidates:
        c = view.checks[ep.target]
        if c.status is None:
            view.targets.append(Target(ep, error=c.error or "unreachable"))
            continue
        mid = c.member_id
        if mid in seen:
            continue  # two endpoints of one member: defragment it once
        seen.add(mid)
        name = view.name_of(mid) if mid in view.voters else (learners[mid].name if mid in learners else "")
        view.targets.append(Target(ep, mid, name, is_learner=bool(c.status.isLearner) or mid in learners))
    return view


def refuse_if_unsafe(view: ClusterView, force: bool, dry_run: bool) -> list[str]:
    """Raise :class:`SafetyRefusal` for the view's problems unless ``force``; return the waived ones."""
    problems = list(view.problems)
    if len(view.voters) == 1 and not dry_run:
        problems.append("the cluster has a single voting member: defragmenting it blocks every read and write "
                        "of the cluster until it completes")
    if problems and not force:
        raise SafetyRefusal("refusing to defragment: " + "; ".join(problems))
    return problems


def check_options_for_targets(view: ClusterView) -> None:
    if not view.targets:
        raise UsageError("no member to defragment: give --endpoints or --cluster")
