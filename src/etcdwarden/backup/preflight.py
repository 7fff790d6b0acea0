"""Before a backup: is the cluster in a state worth backing up, and which member to take it from.

Refusals (exit 3, overridden by ``--force``): no member answers, the cluster has no quorum, or a
CORRUPT alarm is active. A NOSPACE alarm only warns (a backup is still exactly what you want then).
The member: ``--member`` if given; otherwise a healthy voting member, preferring a follower that is
fully applied (highest raft applied index), the leader last. A cluster with authentication enabled
and no (or too few) credentials fails here, once (exit 1), before any member is asked for a snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from etcdwarden.errors import NoLeader, PermissionDenied, SafetyRefusal, Timeout, Unreachable, UsageError, setting
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient, member_endpoint
from etcdwarden.etcd.endpoints import Endpoint
from etcdwarden.inspect import ALARM_NAMES, Health, MemberStatus, health_all, status_all


@dataclass
class Candidate:
    member: pb.Member
    endpoint: Endpoint
    status: MemberStatus

    @property
    def name(self) -> str:
        return self.member.name or f"{self.member.ID:x}"


@dataclass
class Preflight:
    members: list[pb.Member]
    statuses: list[MemberStatus]
    health: list[Health]
    alarms: list[pb.AlarmMember]
    candidates: list[Candidate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def leader_id(self) -> int:
        for s in self.statuses:
            if s.status and s.status.leader:
                return int(s.status.leader)
        return 0


def _answering(h: Health) -> bool:
    # an alarm makes etcdctl call a member unhealthy; for a backup a member that serves reads is fine
    return h.reachable


async def check_access(client: EtcdClient) -> None:
    """Fail once, before any snapshot, when the cluster needs credentials we lack (or a user it refuses).

    Member list and status answer without credentials even when authentication is enabled; the snapshot
    does not, and trying it on every member in turn would print the same refusal once per member. A
    serializable one-key read needs credentials when auth is on, and is always allowed to the root role
    (which the snapshot needs), so its refusal settles it. Other failures are left to the health checks.
    """
    req = pb.RangeRequest(key=b"\x00", limit=1, serializable=True, keys_only=True, count_only=True)
    try:
        await client.range(req)
    except PermissionDenied as e:
        if client.config.user:
            raise PermissionDenied(f"user {client.config.user!r} may not read the keyspace, so it cannot take a "
                                   "snapshot either: a snapshot needs a user with the root role", e.endpoint) from None
        raise PermissionDenied("authentication required: the cluster has authentication enabled; give "
                               f"{setting('credentials')} of a user with the root role, which the snapshot "
                               "needs") from None
    except (Unreachable, Timeout, NoLeader):
        pass  # judged below, member by member


async def preflight(client: EtcdClient, force: bool = False, member: str | None = None) -> Preflight:
    members = await client.member_list(linearizable=False)
    await check_access(client)
    eps: list[tuple[pb.Member, Endpoint]] = []
    for m in members:
        ep = member_endpoint(m)
        if ep is not None:
            eps.append((m, ep))
    statuses = await status_all(client, [ep for _, ep in eps])
    health = await health_all(client, [ep for _, ep in eps])
    try:
        alarms = await client.alarms()
    except Exception:  # without quorum the alarm list may fail; judged below
        alarms = []
    pre = Preflight(members, statuses, health, alarms)

    voters = [m for m in members if not m.isLearner]
    id_by_target = {ep.target: int(m.ID) for m, ep in eps}
    healthy_ids = {id_by_target[h.endpoint.target] for h in health if _answering(h)}
    healthy_voters = [m for m in voters if int(m.ID) in healthy_ids]
    problems: list[str] = []
    kinds = {ALARM_NAMES.get(int(a.alarm), str(a.alarm)) for a in alarms}
    if "CORRUPT" in kinds:
        problems.append("a CORRUPT alarm is active: the data may be corrupted; find the bad member first")
    if "NOSPACE" in kinds:
        pre.warnings.append("a NOSPACE alarm is active: the cluster rejects writes until it is defragmented "
                            "and the alarm disarmed (the backup is taken anyway)")
    if not healthy_ids:
        up = sum(1 for st in statuses if st.ok)
        if up:
            problems.append(f"the cluster has no quorum: {up} of {len(members)} members answer but none can serve "
                            "a linearizable read")
        else:
            problems.append("no member is healthy (none answered)")
    elif len(healthy_voters) < len(voters) // 2 + 1:
        problems.append(f"the cluster has no quorum ({len(healthy_voters)} of {len(voters)} voting members "
                        "healthy): a snapshot now may miss committed writes")
    if problems:
        if not force:
            raise SafetyRefusal("refusing to back up: " + "; ".join(problems))
        pre.warnings += [f"--force: {p}" for p in problems]

    by_target = {s.endpoint.target: s for s in statuses}
    cands = [Candidate(m, ep, by_target[ep.target]) for m, ep in eps
             if by_target[ep.target].ok and not m.isLearner]
    if member:
        chosen = [c for c in cands if member in (c.member.name, f"{c.member.ID:x}", c.endpoint.raw, c.endpoint.target)]
        if not chosen:
            names = ", ".join(f"{m.name or '?'} ({m.ID:x})" for m in members)
            raise UsageError(f"--member {member!r} is not a started voting member that answers; members: {names}")
        c = chosen[0]
        if int(c.member.ID) not in healthy_ids and not force:
            raise SafetyRefusal(f"member {c.name} is not healthy")
        pre.candidates = chosen + [x for x in cands if x is not c and int(x.member.ID) in healthy_ids]
        return pre
    healthy = [c for c in cands if int(c.member.ID) in healthy_ids] or (cands if force else [])
    max_applied = max((int(c.status.status.raftAppliedIndex) for c in healthy if c.status.status), default=0)

    def rank(c: Candidate) -> tuple[int, int, int]:
        st = c.status.status
        applied = int(st.raftAppliedIndex) if st else 0
        return (int(c.status.is_leader), int(applied < max_applied), -applied)

    pre.candidates = sorted(healthy, key=rank)
    return pre
