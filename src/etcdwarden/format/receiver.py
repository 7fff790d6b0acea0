"""The receiver's state object in a repository: who receives into it, and how far the capture is durable.

``etcdwarden receive`` keeps one small object, ``.etcdwarden-receive.json`` (a name of etcdwarden's own
bookkeeping: the catalog neither lists it as a backup nor as unknown), rewritten every few seconds::

    {"format": 1, "kind": "receiver", "cluster_id": "cdf818194e3a8c32", "base": "2026-12-02_101500",
     "revision": 1234, "confirmed_at": "2026-12-02T10:20:05.123456Z",
     "holder": {"host": "node1", "pid": 4242, "start": 99, "token": "9f..", "version": "0.4.0"},
     "heartbeat_at": "2026-12-02T10:20:05.2Z", "stopped": false}

It says two things:

* **progress**: every revision of the chain ``base`` up to ``revision`` is durable in segments, and the
  cluster had no revision after ``revision`` when the receiver last heard from it (a watch progress
  notification) at ``confirmed_at``. So an idle cluster still advances the recoverable window's end time:
  a restore ``--to-time T`` with ``T`` up to ``confirmed_at`` is exact.
* **the lease**: a receiver that is running (``stopped`` false, ``heartbeat_at`` recent) owns the
  repository's capture; a second receiver refuses to start (see :mod:`etcdwarden.backup.receive`).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from etcdwarden.errors import EtcdwardenError
from etcdwarden.format.names import TS

STATE_NAME = ".etcdwarden-receive.json"
STATE_FORMAT = 1


class ReceiverStateError(EtcdwardenError):
    """The receiver's state object cannot be read (the message says why)."""


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)


class StateHolder(_Part):
    """The receiver process that wrote the state (``token`` is random per run: tells two runs apart)."""

    host: str
    pid: int
    start: int | None = None  # process start time (clock ticks since boot), to tell a reused PID apart
    token: str
    version: str


class ReceiverState(_Part):
    format: Literal[1] = 1
    kind: Literal["receiver"] = "receiver"
    cluster_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{1,16}$")]
    # the chain being written (None: the receiver has not chosen or taken its base backup yet)
    base: Annotated[str, StringConstraints(pattern=rf"^{TS}$")] | None = None
    revision: Annotated[int, Field(ge=0)] = 0  # every revision of the chain up to this one is durable
    # the cluster was still at `revision` then (None: not confirmed yet)
    confirmed_at: Annotated[AwareDatetime | None, Field(strict=False)] = None
    holder: StateHolder
    heartbeat_at: Annotated[AwareDatetime, Field(strict=False)]
    stopped: bool = False  # the receiver exited cleanly (its lease is free)


def load_state(raw: bytes) -> ReceiverState:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ReceiverStateError(f"{STATE_NAME}: not valid JSON: {e}") from None
    if isinstance(doc, dict) and isinstance(doc.get("format"), int) and doc["format"] > STATE_FORMAT:
        raise ReceiverStateError(f"{STATE_NAME}: format {doc['format']}, written by a newer etcdwarden; upgrade")
    try:
        return ReceiverState.model_validate(doc)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"]) or "the state"
        raise ReceiverStateError(f"{STATE_NAME}: {loc}: {err['msg']}") from None


def dump_state(state: ReceiverState) -> bytes:
    return (json.dumps(state.model_dump(mode="json", by_alias=True), indent=2) + "\n").encode()


__all__ = ["STATE_NAME", "ReceiverState", "ReceiverStateError", "StateHolder", "dump_state", "load_state"]
