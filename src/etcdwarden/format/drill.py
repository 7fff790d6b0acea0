"""The record of a restore drill (``drill_<ts>.json``, beside the backup ``<ts>`` it proves).

A drill restores a backup into a throwaway member and compares what that member serves with what the
manifest recorded at backup time (:mod:`etcdwarden.restore.drill`). Its record says how that went:

``result``
    ``passed`` when every check passed and every figure that could be compared is equal; else ``failed``.
``figures``
    name -> recorded / measured / ok (``ok`` is ``null`` when the figure was not compared: not recorded at
    backup time, or not comparable; ``note`` says why). Names: ``revision``, ``keys`` (live keys at the
    revision), ``hash_kv``, ``snapshot_total_key`` and ``snapshot_hash`` (``snapshot status`` figures of
    the restored file).
``checks``
    name -> ok / detail: ``files``, ``snapshot``, ``restore``, ``start``, ``figures``, ``kubernetes``,
    ``resources``, ``segments``.
``durations``
    seconds per step (``fetch``, ``decode``, ``restore``, ``start``, ``measure``, ``keys``, ``resources``,
    ``total``).

The last drill of a backup is the one record (a new drill replaces it, written atomically through the
repository's writer). A failed drill never deletes anything: ``backups list`` shows the backup
``unproven`` (see :attr:`DrillRecord.passed`), retention prefers proven backups when it must choose. A
record of a newer format than this etcdwarden knows, or one that does not validate, is an unreadable
record: the backup then counts as unproven (it is not known to be restorable).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from etcdwarden.errors import EtcdwardenError
from etcdwarden.format.manifest import Tool
from etcdwarden.format.names import TS

FORMAT = 1
PASSED: Literal["passed"] = "passed"
FAILED: Literal["failed"] = "failed"

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class DrillRecordError(EtcdwardenError):
    """A drill record that cannot be used (not JSON, not a record, a newer format): the message says why."""


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Figure(_Part):
    """One number the backup recorded and the restored member measured (``ok`` null: not compared)."""

    recorded: int | None = None
    measured: int | None = None
    ok: bool | None = None
    note: str | None = None


class Check(_Part):
    ok: bool
    detail: str = ""


class DrillRecord(_Part):
    """One restore drill of one backup (see the module docstring). Field order is the order on disk."""

    format: int = FORMAT
    backup: Annotated[str, StringConstraints(pattern=rf"^{TS}$")]
    result: Literal["passed", "failed"]
    started_at: Annotated[AwareDatetime, Field(strict=False)]
    finished_at: Annotated[AwareDatetime, Field(strict=False)]
    tool: Tool
    host: str | None = None
    etcd_version: str | None = None  # the etcd binary that served the restored member
    etcdutl_version: str | None = None  # the etcdutl that restored it
    revision: int | None = None  # the revision the restored member served
    figures: dict[str, Figure] = Field(default_factory=dict)
    checks: dict[str, Check] = Field(default_factory=dict)
    durations: dict[str, Seconds] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.result == PASSED

    @property
    def id(self) -> str:
        return self.backup

    def age(self, now: dt.datetime) -> dt.timedelta:
        """How long ago the drill finished."""
        return now - self.finished_at

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.model_dump(mode="json")
        return doc


def load(raw: bytes | str, expected_id: str | None = None) -> DrillRecord:
    """Parse and validate a drill record; ``expected_id``: the backup ID its name carries."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise DrillRecordError(f"the drill record is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise DrillRecordError("the drill record is not a JSON object")
    version = doc.get("format")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DrillRecordError(f"format: {version!r} is not a drill record format")
    if version > FORMAT:
        raise DrillRecordError(f"the drill record is in format {version}, written by a newer etcdwarden (this one "
                               f"reads format {FORMAT})")
    try:
        record = DrillRecord.model_validate(doc)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "the drill record"
        raise DrillRecordError(f"{where}: {err['msg']}") from None
    if expected_id is not None and record.backup != expected_id:
        raise DrillRecordError(f"the drill record is of backup {record.backup}, not of its name's {expected_id}")
    return record


def dump(record: DrillRecord) -> bytes:
    """The record's bytes (JSON, 2-space indent)."""
    if record.format != FORMAT:
        raise DrillRecordError(f"format: only format {FORMAT} is written (this record says {record.format})")
    return (json.dumps(record.as_json(), indent=2) + "\n").encode()
