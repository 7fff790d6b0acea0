"""Job state (last run of each job, single backups done) kept in etcd, so every agent sees it.

One JSON value per job under ``<prefix>state/<job key>``. Writes are guarded: a Txn that compares the
create revision of this agent's election key, so only the current leader can record a run; a deposed
leader's write fails with :class:`~etcdwarden.etcd.election.LeadershipLost` instead of clobbering the
new leader's record.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient, prefix_end
from etcdwarden.etcd.election import Leadership, LeadershipLost

SUCCESS = "success"
FAILURE = "failure"
ABORTED = "aborted"


def _ts(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    return dt.datetime.fromisoformat(str(value))


@dataclass
class JobState:
    """What is known about one job's runs. Times are UTC."""

    last_slot: dt.datetime | None = None
    last_started: dt.datetime | None = None
    last_finished: dt.datetime | None = None
    last_result: str | None = None  # success, failure, aborted
    last_error: str | None = None
    last_success: dt.datetime | None = None
    last_duration: float | None = None
    last_size: int | None = None  # bytes of the last successful backup
    last_revision: int | None = None
    last_location: str | None = None
    successes: int = 0
    failures: int = 0  # every failed or aborted attempt (retries included)
    agent: str | None = None  # the agent that ran it last
    running: dict[str, Any] | None = None  # {"slot", "started", "agent"} while a run is in progress
    uid: str | None = None  # single backups: the EtcdBackup's uid
    prune: dict[str, Any] | None = None  # last retention run: {"ok", "deleted", "error", "at"}
    prune_failures: int = 0
    details: dict[str, Any] = field(default_factory=dict)  # job-kind specific figures (defrag)
    # retries of a failed scheduled backup (see etcdwarden.daemon.jobs)
    attempt: int = 0  # the attempt number of the last finished run for last_slot (1: the first)
    retry_at: dt.datetime | None = None  # when the next attempt of last_slot is due; None: no retry pending
    retries: int = 0  # retry attempts started (every attempt after the first of a slot)
    final_failures: int = 0  # runs that ended failed with no retry left (or dropped for the next slot)
    attempt_log: list[dict[str, Any]] = field(default_factory=list)  # the attempts of last_slot, oldest first

    def to_json(self) -> bytes:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, dt.datetime):
                d[k] = v.isoformat()
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> JobState:
        d = json.loads(raw)
        known = {f.name for f in fields(cls)}
        st = cls(**{k: v for k, v in d.items() if k in known})
        for name in ("last_slot", "last_started", "last_finished", "last_success", "retry_at"):
            setattr(st, name, _ts(getattr(st, name)))
        return st

    @property
    def done(self) -> bool:
        """A single backup is done once it has run (successfully or not: it is not retried)."""
        return self.last_finished is not None


class StateStore(Protocol):
    async def load(self) -> dict[str, JobState]: ...

    async def save(self, key: str, state: JobState) -> None:
        """Record ``state`` for job ``key``; raise LeadershipLost when this agent no longer leads."""
        ...


class MemoryStateStore:
    """State in this process only (tests; one agent without election)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.writable = True

    async def load(self) -> dict[str, JobState]:
        return {k: JobState.from_json(v) for k, v in self.data.items()}

    async def save(self, key: str, state: JobState) -> None:
        if not self.writable:
            raise LeadershipLost("not the leader")
        self.data[key] = state.to_json()


class EtcdStateStore:
    """State under ``<prefix>state/`` in etcd, written only while ``leadership()`` holds."""

    def __init__(self, client: EtcdClient, prefix: str,
                 leadership: Callable[[], Leadership | None] | None = None) -> None:
        self.client = client
        self.base = (prefix.rstrip("/") + "/state/").encode()
        self.leadership = leadership

    async def load(self) -> dict[str, JobState]:
        resp = await self.client.range(pb.RangeRequest(key=self.base, range_end=prefix_end(self.base)))
        out: dict[str, JobState] = {}
        for kv in resp.kvs:
            key = bytes(kv.key)[len(self.base):].decode(errors="replace")
            try:
                out[key] = JobState.from_json(bytes(kv.value))
            except (ValueError, TypeError):
                continue  # unreadable record: treated as never run
        return out

    async def save(self, key: str, state: JobState) -> None:
        put = pb.RequestOp(request_put=pb.PutRequest(key=self.base + key.encode(), value=state.to_json()))
        if self.leadership is None:  # election disabled: a single agent by configuration
            await self.client.txn(pb.TxnRequest(success=[put]))
            return
        ld = self.leadership()
        if ld is None:
            raise LeadershipLost("this agent is not the leader: job state not written")
        resp = await self.client.txn(pb.TxnRequest(compare=[ld.guard()], success=[put]))
        if not resp.succeeded:
            raise LeadershipLost("leadership was lost (the election key changed): job state not written")
