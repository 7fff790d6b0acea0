"""Rolling defragmentation: one member at a time, followers first, the leader last.

The flow (``rolling_defrag``):

1. survey the cluster: every voting member must answer Status and a linearizable read, there must be
   quorum, and no alarm but NOSPACE may be active (else :class:`SafetyRefusal`, unless ``force``);
2. optionally compact the history to the current revision (physical);
3. repeatedly pick the next member: the first pending one that is not the leader *now* (leadership can
   move during a run), the leader only when nothing else is left. For each member: read its Status,
   evaluate the rule, move leadership away first if asked (MoveLeader to a member already
   defragmented), send Defragment with its own timeout, read Status again (did the file shrink?),
   then wait until the member is healthy and has applied everything the leader had committed, and
   at least ``wait`` seconds, before touching the next one;
4. a Defragment that times out is never retried (the server keeps going); the run stops there unless
   ``continue_on_error``. A member that does not recover within ``recover_timeout`` always stops it;
5. list alarms; disarm NOSPACE only if every member's quota is known (:mod:`.quota`: its Status, its
   local command line or manifest, or ``db_quota_bytes``) and its file is now below
   ``disarm_threshold`` × quota; otherwise leave the alarm and say which quota is missing.

Nothing here prints: progress goes to ``options.on_event``; the result is a :class:`DefragReport`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from etcdwarden.defrag import quota as quota_module
from etcdwarden.defrag.plan import (
    ClusterView,
    MemberCheck,
    Target,
    alarm_name,
    check_member,
    check_options_for_targets,
    refuse_if_unsafe,
    survey,
)
from etcdwarden.defrag.quota import Quota, QuotaFinder, unknown_reason
from etcdwarden.defrag.report import AlarmInfo, DefragReport, LeaderMove, MemberResult, Outcome
from etcdwarden.defrag.rules import QUOTA_VARIABLES, Rule, RuleEvalError, rule_variables
from etcdwarden.errors import Compacted, EtcdError, Timeout, name_settings, setting
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.endpoints import Endpoint

log = logging.getLogger(__name__)

LEADER_SETTLE_MAX = 10.0  # after MoveLeader, wait at most this long (OpenShift's defrag settle time)


@dataclass(frozen=True)
class DefragEvent:
    """Progress of a run, for a CLI or the daemon to show or log."""

    kind: str  # survey, compact, skip, move-leader, defrag, defragmented, wait, recovered, alarm, stop
    endpoint: str
    message: str


@dataclass
class DefragOptions:
    cluster: bool = False  # every voting member from the member list, instead of the client's endpoints
    rule: Rule | None = None  # None: defragment every member
    compact: bool = False
    move_leader: bool = False
    wait: float = 60.0  # minimum pause after a member before the next (the seeds' "at least one minute")
    defrag_timeout: float = 30.0  # the Defragment call (also Compact and MoveLeader)
    recover_timeout: float = 60.0  # how long a defragmented member may take to be healthy and caught up
    dry_run: bool = False
    force: bool = False
    continue_on_error: bool = False
    # the members' --quota-backend-bytes (etcd's meaning: 0 = 2 GiB, negative = none), for members whose
    # quota neither their Status (etcd >= 3.6) nor this host (their etcd process or manifest) tells; None:
    # not given, so such a member's quota is unknown and NOSPACE is not disarmed
    db_quota_bytes: int | None = None
    manifest: Path | None = None  # an etcd static pod manifest to read the quota from
    # where to look for this host's etcd processes (None: do not look)
    proc: Path | None = field(default_factory=lambda: quota_module.PROC)
    disarm: bool = True
    disarm_threshold: float = 0.9  # disarm NOSPACE only when every db is below this share of the quota
    poll_interval: float = 0.25
    on_event: Callable[[DefragEvent], None] | None = None
    # how the caller's user names the settings the report mentions (errors.setting): flags or config keys
    setting_names: Mapping[str, str] = field(default_factory=dict)


class _Run:
    def __init__(self, client: EtcdClient, options: DefragOptions) -> None:
        self.client = client
        self.o = options
        self.report = DefragReport(dry_run=options.dry_run, rule=options.rule.text if options.rule else None)
        self.view = ClusterView()
        self.defragmented: list[int] = []  # member IDs defragmented in this run, in order
        self.quotas = QuotaFinder(options.db_quota_bytes, options.manifest, options.proc)

    def named(self, text: str) -> str:
        return name_settings(text, self.o.setting_names)

    # -- helpers -----------------------------------------------------------------------------
    def emit(self, kind: str, endpoint: str, message: str) -> None:
        log.debug("%s %s: %s", kind, endpoint, message)
        if self.o.on_event is not None:
            self.o.on_event(DefragEvent(kind, endpoint, message))

    async def voter_checks(self, health: bool = False, answered_survey: bool = False) -> dict[int, MemberCheck]:
        """Fresh Status (and, with ``health``, a linearizable read) of every voting member."""
        async def one(ep: Endpoint) -> MemberCheck:
            if health:
                return await check_member(self.client, ep)
            try:
                return MemberCheck(ep, await self.client.status(ep))
            except EtcdError as e:
                return MemberCheck(ep, None, e.detail)

        ids = [mid for mid, ep in self.view.voter_endpoints.items()
               if not answered_survey or ((c := self.view.checks.get(ep.target)) is not None and c.status is not None)]
        checks = await asyncio.gather(*(one(self.view.voter_endpoints[i]) for i in ids))
        return dict(zip(ids, checks, strict=True))

    async def current_leader(self) -> int:
        """The leader most voting members report (0 if none answers); members dead at the survey are not
        asked again (each would cost a dial timeout)."""
        votes: dict[int, int] = {}
        for c in (await self.voter_checks(answered_survey=True)).values():
            if c.leader_id:
                votes[c.leader_id] = votes.get(c.leader_id, 0) + 1
        return max(votes, key=lambda k: votes[k]) if votes else 0

    def quota_for(self, member_id: int, status: pb.StatusResponse) -> Quota | None:
        return self.quotas.find(self.view.voters.get(member_id), status)

    # -- phases ------------------------------------------------------------------------------
    async def run(self) -> DefragReport:
        start = time.monotonic()
        self.emit("survey", "", "checking the health of every member")
        self.view = await survey(self.client, self.o.cluster)
        check_options_for_targets(self.view)
        await asyncio.to_thread(self.quotas.load)
        for p in refuse_if_unsafe(self.view, self.o.force, self.o.dry_run):
            self.report.notes.append(self.named(f"went on despite ({setting('force')}): {p}"))
        self.report.alarms_before = [AlarmInfo(int(a.memberID), alarm_name(a.alarm)) for a in self.view.alarms]

        pending: list[Target] = []
        for t in self.view.targets:
            if t.error is not None:
                self.report.members.append(MemberResult(t.endpoint.raw, outcome=Outcome.UNREACHABLE, detail=t.error))
            elif t.is_learner:
                self.report.members.append(MemberResult(
                    t.endpoint.raw, t.member_id, t.name, outcome=Outcome.SKIPPED,
                    detail="learner: etcd does not defragment learners"))
            else:
                pending.append(t)

        if self.o.compact:
            await self.compact()
        while pending:
            leader = await self.current_leader()
            idx = next((i for i, t in enumerate(pending) if t.member_id != leader), 0)
            target = pending.pop(idx)
            r = MemberResult(target.endpoint.raw, target.member_id, target.name)
            self.report.members.append(r)
            ok = await self.one_member(target, r, more=bool(pending))
            if self.report.stopped_reason is None and not ok and not self.o.continue_on_error:
                self.report.stopped_reason = self.named(
                    f"{r.outcome.value} on {r.endpoint}; the remaining members were not touched (with "
                    f"{setting('continue_on_error')} a run goes on after a failure)")
            if self.report.stopped_reason is not None:
                self.emit("stop", r.endpoint, self.report.stopped_reason)
                for rest in pending:
                    self.report.members.append(MemberResult(
                        rest.endpoint.raw, rest.member_id, rest.name, outcome=Outcome.NOT_RUN,
                        detail="the run stopped before this member"))
                break
        await self.alarms()
        self.report.notes.extend(self.quotas.notes)
        self.report.took = time.monotonic() - start
        return self.report

    async def compact(self) -> None:
        checks = await self.voter_checks()
        revs = [int(c.status.header.revision) for c in checks.values() if c.status is not None]
        if not revs:
            self.report.compaction_error = "no member answered Status"
            return
        rev = max(revs)
        if self.o.dry_run:
            self.report.notes.append(f"would compact the history up to revision {rev}")
            return
        self.emit("compact", "", f"compacting the history up to revision {rev} (physical)")
        try:
            await self.client.compact(rev, physical=True, timeout=self.o.defrag_timeout)
            self.report.compacted_revision = rev
        except Compacted:
            self.report.notes.append(f"history already compacted at revision {rev}")
        except EtcdError as e:
            # like etcd-defrag: a failed compaction does not stop the defragmentation
            self.report.compaction_error = str(e)
            self.report.notes.append(f"compaction failed, went on without it: {e}")

    async def one_member(self, t: Target, r: MemberResult, more: bool) -> bool:
        """Defragment one member; False when it failed (the caller decides whether to go on)."""
        ep = t.endpoint
        try:
            st = await self.client.status(ep)
        except EtcdError as e:
            r.outcome, r.detail = Outcome.UNREACHABLE, e.detail
            return False
        r.was_leader = int(st.leader) != 0 and int(st.leader) == int(st.header.member_id)
        r.db_size_before, r.db_size_in_use_before = int(st.dbSize), int(st.dbSizeInUse)
        quota = self.quota_for(t.member_id, st)
        if quota is not None:
            r.db_quota, r.db_quota_source = quota.bytes, quota.source
        env = rule_variables(int(st.dbSize), int(st.dbSizeInUse),
                             None if quota is None else -1 if quota.bytes is None else quota.bytes)
        if self.o.rule is not None:
            needs = sorted(self.o.rule.variables & QUOTA_VARIABLES)
            if quota is None and needs:
                r.outcome = Outcome.FAILED
                r.detail = (f"the rule uses {' and '.join(needs)}, but "
                            f"{unknown_reason(self.view.voters.get(t.member_id), st, self.quotas)}")
                return False
            try:
                r.rule_matched = self.o.rule.matches(env)
            except RuleEvalError as e:
                # e.g. a division by a figure that is 0 on this member: no verdict, so no defragmentation
                r.outcome = Outcome.FAILED
                r.detail = (f"{e} with this member's figures (dbSize {int(st.dbSize)}, dbSizeInUse "
                            f"{int(st.dbSizeInUse)}); it was not defragmented (guard the rule, e.g. "
                            "'dbSizeFree > 0 && ...')")
                return False
            if not r.rule_matched:
                r.outcome = Outcome.SKIPPED
                r.detail = (f"rule is false (fragmentation {env['fragmentation']:.0%}, "
                            f"{int(env['dbSizeFree'])} bytes free)")
                self.emit("skip", ep.raw, r.detail)
                return True
        moving = r.was_leader and self.o.move_leader and len(self.view.voters) > 1
        if self.o.dry_run:
            r.outcome = Outcome.WOULD_DEFRAGMENT
            r.detail = "leader: would move leadership away first" if moving else ("leader" if r.was_leader else "")
            return True
        if moving:
            try:
                new_leader = await self.move_leadership(t)
            except EtcdError as e:
                r.outcome = Outcome.FAILED
                r.detail = f"could not move leadership away, so it was not defragmented: {e.detail}"
                return False
            r.detail = f"leadership moved to {self.view.name_of(new_leader)} first"
        elif r.was_leader:
            r.detail = "leader, defragmented in place" if len(self.view.voters) > 1 else ""
        r.leader_at_defrag = await self.current_leader()

        self.emit("defrag", ep.raw, f"defragmenting {t.name or ep.raw} (db {r.db_size_before} bytes, "
                  f"timeout {self.o.defrag_timeout:g}s)")
        started = time.monotonic()
        try:
            await self.client.defragment(ep, timeout=self.o.defrag_timeout)
        except Timeout:
            r.took = time.monotonic() - started
            r.outcome = Outcome.TIMED_OUT
            r.detail = _join(r.detail, self.named(
                f"no answer within {self.o.defrag_timeout:g}s; the defragmentation goes on inside etcd, so it was "
                f"not retried (raise {setting('defrag_timeout')})"))
            return await self.after_failure(t, more)
        except EtcdError as e:
            r.took = time.monotonic() - started
            r.outcome, r.detail = Outcome.FAILED, _join(r.detail, e.detail)
            return await self.after_failure(t, more)
        r.took = time.monotonic() - started
        ended = time.monotonic()
        self.defragmented.append(t.member_id)
        r.outcome = Outcome.DEFRAGMENTED
        try:
            after = await self.client.status(ep)
            r.db_size_after, r.db_size_in_use_after = int(after.dbSize), int(after.dbSizeInUse)
            if r.db_size_after >= (r.db_size_before or 0):
                r.detail = _join(r.detail, "the file did not shrink (nothing to reclaim, or writes refilled it)")
        except EtcdError as e:
            r.detail = _join(r.detail, f"status after defragmentation failed: {e.detail}")
        self.emit("defragmented", ep.raw, f"{r.db_size_before} → {r.db_size_after} bytes in {r.took:.2f}s")
        if not await self.wait_recovered(t):
            return False
        if more:
            remaining = self.o.wait - (time.monotonic() - ended)
            if remaining > 0:
                self.emit("wait", ep.raw, f"waiting {remaining:.0f}s before the next member")
                await asyncio.sleep(remaining)
        return True

    async def after_failure(self, t: Target, more: bool) -> bool:
        """A failed or timed-out Defragment: if going on, first let that member recover."""
        if self.o.continue_on_error and more:
            await self.wait_recovered(t)
        return False

    async def wait_recovered(self, t: Target) -> bool:
        """Until ``t`` answers a linearizable read and has applied the leader's committed index."""
        deadline = time.monotonic() + self.o.recover_timeout
        goal: int | None = None
        last = "no answer"
        while True:
            check = await check_member(self.client, t.endpoint)
            if check.healthy and check.status is not None:
                if goal is None:
                    goal = await self.leader_commit_index(check)
                applied = int(check.status.raftAppliedIndex)
                if goal is not None and applied >= goal:
                    self.emit("recovered", t.endpoint.raw, f"healthy, applied index {applied} ≥ {goal}")
                    return True
                last = f"applied index {applied} behind the leader's {goal}"
            else:
                last = check.error or "unhealthy"
            if time.monotonic() >= deadline:
                self.report.stopped_reason = (
                    f"{t.endpoint.raw} did not recover within {self.o.recover_timeout:g}s after its "
                    f"defragmentation ({last}); stopped before touching another member")
                return False
            await asyncio.sleep(self.o.poll_interval)

    async def leader_commit_index(self, check: MemberCheck) -> int | None:
        leader = check.leader_id
        if leader == check.member_id and check.status is not None:
            return int(check.status.raftIndex)
        ep = self.view.voter_endpoints.get(leader)
        if ep is None:
            return None
        try:
            return int((await self.client.status(ep)).raftIndex)
        except EtcdError:
            return None

    async def move_leadership(self, t: Target) -> int:
        """MoveLeader from ``t`` (the leader) to a healthy member, preferring ones defragmented already."""
        checks = await self.voter_checks(health=True)
        candidates = [mid for mid, c in checks.items() if mid != t.member_id and c.healthy]
        done = [mid for mid in reversed(self.defragmented) if mid in candidates]

        def frag(mid: int) -> float:
            s = checks[mid].status
            return (s.dbSize - s.dbSizeInUse) / s.dbSize if s is not None and s.dbSize else 0.0

        order = done + sorted((m for m in candidates if m not in done), key=frag)
        errors: list[str] = []
        for mid in order:
            self.emit("move-leader", t.endpoint.raw, f"moving leadership to {self.view.name_of(mid)}")
            started = time.monotonic()
            try:
                await self.client.move_leader(t.endpoint, mid, timeout=self.o.defrag_timeout)
                await self.wait_leader(t.endpoint, mid)
            except EtcdError as e:
                errors.append(f"to {self.view.name_of(mid)}: {e.detail}")
                continue
            self.report.leader_moves.append(LeaderMove(t.member_id, mid, time.monotonic() - started))
            settle = min(self.o.wait, LEADER_SETTLE_MAX)
            if settle > 0:
                await asyncio.sleep(settle)
            return mid
        raise EtcdError("; ".join(errors) or "no healthy member to take over", t.endpoint.raw)

    async def wait_leader(self, ep: Endpoint, new_leader: int) -> None:
        """Until ``ep`` itself reports ``new_leader`` as the leader."""
        deadline = time.monotonic() + self.o.recover_timeout
        while True:
            try:
                if int((await self.client.status(ep)).leader) == new_leader:
                    return
            except EtcdError:
                pass
            if time.monotonic() >= deadline:
                raise Timeout(f"leadership did not reach member {new_leader:x} within {self.o.recover_timeout:g}s",
                              ep.raw)
            await asyncio.sleep(self.o.poll_interval)

    async def alarms(self) -> None:
        rep = self.report
        try:
            active = await self.client.alarms()
        except EtcdError as e:
            rep.notes.append(f"could not list alarms after defragmentation: {e}")
            return
        nospace = [a for a in active if int(a.alarm) == pb.NOSPACE]
        left = list(active)
        if nospace and self.o.disarm:
            checks = await self.voter_checks()
            blockers: list[str] = []
            quotas: list[int | None] = []
            for mid, c in checks.items():
                name = self.view.name_of(mid)
                if c.status is None:
                    blockers.append(f"{name} did not answer Status ({c.error})")
                    continue
                quota = self.quota_for(mid, c.status)
                if quota is None:
                    blockers.append(f"{name}: {unknown_reason(self.view.voters.get(mid), c.status, self.quotas)}")
                    continue
                quotas.append(quota.bytes)
                if quota.bytes is None:
                    continue  # no quota: its size cannot raise NOSPACE
                limit = quota.bytes * self.o.disarm_threshold
                if c.status.dbSize >= limit:
                    blockers.append(f"{name}'s database is {c.status.dbSize} bytes, not below {limit:.0f} "
                                    f"({self.o.disarm_threshold:.0%} of its {quota.describe()})")
            if len(set(quotas)) == 1 and len(quotas) == len(checks):
                rep.db_quota = quotas[0]
            rep.alarm_blockers = blockers
            if blockers:
                rep.notes.append("NOSPACE left armed: " + "; ".join(blockers))
            elif self.o.dry_run:
                rep.notes.append("would disarm NOSPACE if every member ends below the quota")
            else:
                for a in nospace:
                    info = AlarmInfo(int(a.memberID), "NOSPACE")
                    try:
                        await self.client.alarm_disarm(int(a.memberID), pb.NOSPACE)
                    except EtcdError as e:
                        rep.notes.append(f"could not disarm NOSPACE of member {int(a.memberID):x}: {e}")
                        continue
                    rep.alarms_disarmed.append(info)
                    self.emit("alarm", "", f"disarmed NOSPACE of member {self.view.name_of(info.member_id)}")
                try:
                    left = await self.client.alarms()
                except EtcdError as e:
                    rep.notes.append(f"could not list alarms after disarming: {e}")
        rep.alarms_left = [AlarmInfo(int(a.memberID), alarm_name(a.alarm)) for a in left]


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


async def rolling_defrag(client: EtcdClient, options: DefragOptions) -> DefragReport:
    """Defragment the cluster's members one at a time, safely; see the module docstring.

    Raises :class:`~etcdwarden.errors.SafetyRefusal` when the cluster is not healthy enough (unless
    ``options.force``); every per-member problem is reported in the returned :class:`DefragReport`.
    """
    return await _Run(client, options).run()
