"""Job state (last run of each job, single backups done) kept in etcd, so every agent sees it.

One JSON value per job under ``<prefix>state/<job key>``. Writes are guarded: a Txn that compares the
create revision of this agent's election key, so only the current leader can record a run; a deposed
leader's write fails with :class:`~etcdwarden.etcd.election.LeadershipLost` instead of clobbering the
new leader's record.

A record is decoded by :func:`decode`, which validates its whole shape (:class:`_Record`): a record that is
not JSON, not an object, or holds a field of the wrong type or out of range (a naive or absurd time, a
negative counter, a ``running`` that is not an object...) never reaches the scheduler. It comes back as a
fresh :class:`JobState` whose ``invalid`` says why, so the executor logs it, resets it and runs the job.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient, prefix_end
from etcdwarden.etcd.election import Leadership, LeadershipLost

log = logging.getLogger(__name__)

SUCCESS = "success"
FAILURE = "failure"
ABORTED = "aborted"
MAX_RECORD = 1024 * 1024  # a job record is a few KiB; anything larger is not ours
_EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_LATEST = dt.datetime(3000, 1, 1, tzinfo=dt.UTC)


def _plausible(t: dt.datetime) -> dt.datetime:
    try:
        t = t.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 or 9999-12-31T23:59-01:00: no UTC time (pydantic lets it through)
        raise ValueError(f"{t.isoformat()} is not a plausible time for a job run") from None
    if not _EARLIEST <= t < _LATEST:
        raise ValueError(f"{t.isoformat()} is not a plausible time for a job run")
    return t


Time = Annotated[AwareDatetime, AfterValidator(_plausible)]
Count = Annotated[int, Field(ge=0, lt=2**63, strict=True)]
Text = Annotated[str, Field(max_length=64 * 1024)]


class _Part(BaseModel):
    """A nested object of a record: the keys the daemon reads are typed, other keys are kept."""

    model_config = ConfigDict(extra="allow")


class _Running(_Part):
    slot: Text | None = None
    started: Text | None = None
    agent: Text | None = None
    attempt: Count | None = None


class _Prune(_Part):
    ok: bool | None = None
    deleted: list[Text] = Field(default_factory=list)
    kept: Count | None = None
    error: Text | None = None
    at: Text | None = None


class _Attempt(_Part):
    slot: Text | None = None
    attempt: Count | None = None
    started: Text | None = None
    finished: Text | None = None
    result: Text | None = None
    error: Text | None = None
    then: Text | None = None


class _Details(_Part):
    defragmented: Count | Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class _Record(BaseModel):
    """The shape of a stored :class:`JobState` (unknown keys, e.g. of a newer version, are ignored)."""

    model_config = ConfigDict(extra="ignore")
    last_slot: Time | None = None
    last_started: Time | None = None
    last_finished: Time | None = None
    last_result: Literal["success", "failure", "aborted"] | None = None
    last_error: Text | None = None
    last_success: Time | None = None
    last_duration: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    last_size: Count | None = None
    last_revision: Count | None = None
    last_location: Text | None = None
    successes: Count = 0
    failures: Count = 0
    agent: Text | None = None
    running: _Running | None = None
    uid: Text | None = None
    prune: _Prune | None = None
    prune_failures: Count = 0
    details: _Details = Field(default_factory=_Details)
    attempt: Count = 0
    retry_at: Time | None = None
    retries: Count = 0
    final_failures: Count = 0
    attempt_log: list[_Attempt] = Field(default_factory=list, max_length=1000)
    first_seen: Time | None = None
    first_run: Text | None = None


class StateInvalid(ValueError):
    """A stored job record that does not validate (the message says why, briefly)."""


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
    # a job with no history (see etcdwarden.daemon.jobs): it waits for its first slot after first_seen, unless
    # first_run says why it runs at once (a backup whose repository holds no complete backup of the cluster)
    first_seen: dt.datetime | None = None
    first_run: str | None = None
    # not stored: why the record read from the store was discarded (see decode)
    invalid: str | None = field(default=None, compare=False)

    def to_json(self) -> bytes:
        d = asdict(self)
        d.pop("invalid")
        for k, v in d.items():
            if isinstance(v, dt.datetime):
                d[k] = v.isoformat()
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> JobState:
        """The state of a stored record; :class:`StateInvalid` if the record does not validate."""
        if len(raw) > MAX_RECORD:
            raise StateInvalid(f"the record is {len(raw)} bytes, more than a job record can be")
        try:
            rec = _Record.model_validate_json(raw)
        except ValidationError as e:
            raise StateInvalid(_why(e)) from None
        d = rec.model_dump(exclude_none=False)
        for name in ("running", "prune"):  # nested objects as they were stored (unknown keys too)
            part = getattr(rec, name)
            d[name] = part.model_dump(exclude_unset=True) if part is not None else None
        d["details"] = rec.details.model_dump(exclude_unset=True)
        d["attempt_log"] = [a.model_dump(exclude_unset=True) for a in rec.attempt_log]
        return cls(**d)

    @property
    def done(self) -> bool:
        """A single backup is done once it has run (successfully or not: it is not retried)."""
        return self.last_finished is not None


def _why(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "the record"
    more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
    msg = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg}{more}"


def decode(key: str, raw: bytes) -> JobState:
    """The state of job ``key`` from its stored record; a record that does not validate gives a fresh state
    whose ``invalid`` says why (the executor logs and resets it: see JobExecutor.adopt)."""
    try:
        return JobState.from_json(raw)
    except StateInvalid as e:
        log.debug("job %s: its state record does not validate: %s", key, e)
        return JobState(invalid=str(e))


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
        return {k: decode(k, v) for k, v in self.data.items()}

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
            out[key] = decode(key, bytes(kv.value))
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
