"""What a rolling defragmentation did, member by member, as data (the CLI renders it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    DEFRAGMENTED = "defragmented"
    SKIPPED = "skipped"  # the rule said no, or the member is a learner
    WOULD_DEFRAGMENT = "would defragment"  # --dry-run
    TIMED_OUT = "timed out"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    NOT_RUN = "not run"  # the run stopped before this member

    @property
    def is_failure(self) -> bool:
        return self in (Outcome.TIMED_OUT, Outcome.FAILED, Outcome.UNREACHABLE)


@dataclass
class MemberResult:
    endpoint: str
    member_id: int = 0
    name: str = ""
    was_leader: bool = False
    db_size_before: int | None = None
    db_size_in_use_before: int | None = None
    db_size_after: int | None = None
    db_size_in_use_after: int | None = None
    took: float | None = None  # seconds the Defragment call took (or waited before timing out)
    outcome: Outcome = Outcome.NOT_RUN
    detail: str = ""
    leader_at_defrag: int = 0  # the leader's member ID when the Defragment call was sent
    rule_matched: bool | None = None
    db_quota: int | None = None  # its backend quota (None: none, or unknown when db_quota_source is "")
    db_quota_source: str = ""  # who told the quota ("" = unknown)

    @property
    def shrank(self) -> bool | None:
        if self.db_size_before is None or self.db_size_after is None:
            return None
        return self.db_size_after < self.db_size_before

    @property
    def reclaimed(self) -> int | None:
        if self.db_size_before is None or self.db_size_after is None:
            return None
        return self.db_size_before - self.db_size_after

    def as_json(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "memberID": f"{self.member_id:x}",
            "name": self.name,
            "wasLeader": self.was_leader,
            "dbSizeBefore": self.db_size_before,
            "dbSizeAfter": self.db_size_after,
            "dbSizeInUseBefore": self.db_size_in_use_before,
            "dbSizeInUseAfter": self.db_size_in_use_after,
            "reclaimed": self.reclaimed,
            "took": round(self.took, 3) if self.took is not None else None,
            "result": self.outcome.value,
            "detail": self.detail,
            "leaderAtDefrag": f"{self.leader_at_defrag:x}" if self.leader_at_defrag else "",
            "ruleMatched": self.rule_matched,
            "quota": {"bytes": self.db_quota, "source": self.db_quota_source} if self.db_quota_source else None,
        }


@dataclass(frozen=True)
class AlarmInfo:
    member_id: int
    alarm: str

    def as_json(self) -> dict[str, str]:
        return {"memberID": f"{self.member_id:x}", "alarm": self.alarm}


@dataclass(frozen=True)
class LeaderMove:
    from_id: int
    to_id: int
    took: float

    def as_json(self) -> dict[str, object]:
        return {"from": f"{self.from_id:x}", "to": f"{self.to_id:x}", "took": round(self.took, 3)}


@dataclass
class DefragReport:
    dry_run: bool = False
    rule: str | None = None
    members: list[MemberResult] = field(default_factory=list)
    compacted_revision: int | None = None
    compaction_error: str | None = None
    leader_moves: list[LeaderMove] = field(default_factory=list)
    alarms_before: list[AlarmInfo] = field(default_factory=list)
    alarms_disarmed: list[AlarmInfo] = field(default_factory=list)
    alarms_left: list[AlarmInfo] = field(default_factory=list)
    db_quota: int | None = None  # the members' quota when the NOSPACE decision found one for all (None: not)
    alarm_blockers: list[str] = field(default_factory=list)  # why NOSPACE was left armed
    notes: list[str] = field(default_factory=list)
    stopped_reason: str | None = None
    took: float = 0.0

    @property
    def failures(self) -> list[MemberResult]:
        return [m for m in self.members if m.outcome.is_failure]

    @property
    def ok(self) -> bool:
        """No member failed, the run was not stopped, and (unless a dry run) no alarm is left."""
        return not self.failures and self.stopped_reason is None and (self.dry_run or not self.alarms_left)

    def as_json(self) -> dict[str, object]:
        return {
            "success": self.ok,
            "dryRun": self.dry_run,
            "rule": self.rule,
            "members": [m.as_json() for m in self.members],
            "compaction": {"revision": self.compacted_revision, "error": self.compaction_error},
            "leaderMoves": [m.as_json() for m in self.leader_moves],
            "alarms": {
                "before": [a.as_json() for a in self.alarms_before],
                "disarmed": [a.as_json() for a in self.alarms_disarmed],
                "left": [a.as_json() for a in self.alarms_left],
                "keptBecause": list(self.alarm_blockers),
            },
            "dbQuota": self.db_quota,
            "stoppedReason": self.stopped_reason,
            "notes": list(self.notes),
            "took": round(self.took, 3),
        }
