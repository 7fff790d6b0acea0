"""The names of everything etcdwarden stores in a repository, and the one timestamp they share.

A backup's ID is its timestamp ``YYYY-MM-DD_HHMMSS`` (UTC, one-second resolution). Every artifact of
that backup carries it in its name, so a flat listing of a repository groups into backups by ID::

    snapshot_<ts>.db[.zst][.age]              the etcd snapshot (sha256 trailer kept)      Kind.SNAPSHOT
    static_kuberesources_<ts>.tar.gz[.age]    the resources bundle (optional)             Kind.RESOURCES
    backup_<ts>.json                          the manifest, written last                  Kind.MANIFEST
    segment_<ts>_<first-revision>.zst         continuous capture after backup <ts>        Kind.SEGMENT
    segment_<ts>_<first-revision>.json        that segment's own manifest, written last   Kind.SEGMENT_MANIFEST
    drill_<ts>.json                           the record of the last restore drill of <ts> Kind.DRILL

Segments are written by ``etcdwarden receive`` (continuous backup) and drill records by ``backups drill``;
their names carry the backup's ID so that the catalog files them under the backup they belong to (and
retention keeps or deletes them with it). ``<first-revision>`` is the segment's first revision in 19
decimal digits (an int64 fits), so names sort in revision order.

A writer may leave temporary names behind after a crash (:func:`is_temp`): ``<name>.part`` (local
writes in progress), ``.<name>.tmp-<pid>`` (atomic rewrites), and ``.<snapshot>.verify.part`` (the
plain copy a verifying backup keeps while it checks an encoded one). They are never backups; the
catalog lists them with their backup's ID so that retention can clean them up.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from etcdwarden.errors import UsageError

if TYPE_CHECKING:  # imported where used: commands that never read a timestamp start faster
    import datetime as dt

#: the one timestamp pattern (a backup ID); every other pattern here is built from it
TS = r"\d{4}-\d{2}-\d{2}_\d{6}"
TS_FORMAT = "%Y-%m-%d_%H%M%S"
TS_RE = re.compile(rf"^{TS}$")
REVISION_DIGITS = 19


class Kind(enum.StrEnum):
    SNAPSHOT = "snapshot"
    RESOURCES = "resources"
    MANIFEST = "manifest"
    SEGMENT = "segment"
    SEGMENT_MANIFEST = "segment-manifest"
    DRILL = "drill"


#: kinds whose bytes a backup manifest lists in its ``files`` map
DATA_KINDS = frozenset({Kind.SNAPSHOT, Kind.RESOURCES})

# each kind's final name; the groups name what a name carries (see :class:`Name`)
_PATTERNS = {
    Kind.SNAPSHOT: r"snapshot_(?P<id>{ts})\.db(?P<zst>\.zst)?(?P<age>\.age)?",
    Kind.RESOURCES: r"static_kuberesources_(?P<id>{ts})\.tar\.gz(?P<age>\.age)?",
    Kind.MANIFEST: r"backup_(?P<id>{ts})\.json",
    Kind.SEGMENT: r"segment_(?P<id>{ts})_(?P<rev>\d{{{digits}}})\.zst",
    Kind.SEGMENT_MANIFEST: r"segment_(?P<id>{ts})_(?P<rev>\d{{{digits}}})\.json",
    Kind.DRILL: r"drill_(?P<id>{ts})\.json",
}
_FINAL = {kind: p.format(ts=TS, digits=REVISION_DIGITS) for kind, p in _PATTERNS.items()}
_FINAL_RE = {kind: re.compile(rf"^{pattern}$") for kind, pattern in _FINAL.items()}


_TEMP_SUFFIX_RE = re.compile(r"(?:\.verify)?(?:\.part|\.tmp-\d+)$")


def is_temp(name: str) -> bool:
    """Whether ``name`` is a temporary name a writer may leave behind (never a backup; see the module docstring):
    ``[.]<final name>.part`` or ``[.]<final name>.tmp-<pid>``, and for snapshots also ``[.]<snapshot>.verify``
    followed by either suffix. (One regex for all of them cost ~5 ms of every command's start-up to compile.)"""
    return _temp_core(name) is not None


def _temp_core(name: str) -> str | None:
    """The final name inside temporary name ``name`` (``None``: not a temporary name)."""
    m = _TEMP_SUFFIX_RE.search(name)
    if m is None:
        return None
    core = name[1 if name.startswith(".") else 0:m.start()]
    final = _final(core)
    ok = final is Kind.SNAPSHOT if m.group().startswith(".verify") else final is not None
    return core if ok else None


def _final(name: str) -> Kind | None:
    for kind, regex in _FINAL_RE.items():
        if regex.match(name):
            return kind
    return None


def timestamp(now: dt.datetime | None = None) -> str:
    """The backup ID for ``now`` (default: the current time), in UTC."""
    import datetime as dt

    t = now or dt.datetime.now(dt.UTC)
    return t.astimezone(dt.UTC).strftime(TS_FORMAT)


def parse_id(backup_id: str) -> dt.datetime:
    """The time a backup ID stands for; :class:`UsageError` if it is not one (``2026-13-01_000000`` is not)."""
    import datetime as dt

    if not TS_RE.match(backup_id):
        raise UsageError(f"{backup_id!r} is not a backup ID (YYYY-MM-DD_HHMMSS)")
    try:
        return dt.datetime.strptime(backup_id, TS_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        raise UsageError(f"{backup_id!r} is not a valid timestamp") from None


def is_id(text: str) -> bool:
    try:
        parse_id(text)
    except UsageError:
        return False
    return True


@dataclass(frozen=True)
class Name:
    """What an object name says: its kind, the backup ID it belongs to, and whether it is temporary."""

    name: str
    kind: Kind
    id: str
    temp: bool = False
    compression: str | None = None  # snapshots: "zstd" or None
    encrypted: bool = False  # snapshots and bundles: age
    revision: int | None = None  # segments: the first revision

    @property
    def is_data(self) -> bool:
        return self.kind in DATA_KINDS and not self.temp


def parse(name: str) -> Name | None:
    """The :class:`Name` of an object, or ``None`` for a name that is not etcdwarden's."""
    for kind, regex in _FINAL_RE.items():
        m = regex.match(name)
        if m is None:
            continue
        g = m.groupdict()
        return Name(name, kind, g["id"], compression="zstd" if g.get("zst") else None, encrypted=bool(g.get("age")),
                    revision=int(g["rev"]) if g.get("rev") else None)
    core = _temp_core(name)
    if core is not None:
        final = parse(core)
        if final is not None:  # always, for a temporary name
            return Name(name, final.kind, final.id, temp=True, compression=final.compression,
                        encrypted=final.encrypted, revision=final.revision)
    return None


@dataclass(frozen=True)
class BackupNames:
    """The names of one backup's files (all sharing the timestamp ``ts``)."""

    ts: str
    compression: str | None = None
    encrypted: bool = False

    @property
    def snapshot(self) -> str:
        name = f"snapshot_{self.ts}.db"
        if self.compression == "zstd":
            name += ".zst"
        if self.encrypted:
            name += ".age"
        return name

    @property
    def resources(self) -> str:
        return f"static_kuberesources_{self.ts}.tar.gz" + (".age" if self.encrypted else "")

    @property
    def manifest(self) -> str:
        return f"backup_{self.ts}.json"

    @property
    def drill(self) -> str:
        return f"drill_{self.ts}.json"

    def segment(self, first_revision: int) -> str:
        return f"segment_{self.ts}_{first_revision:0{REVISION_DIGITS}d}.zst"

    def segment_manifest(self, first_revision: int) -> str:
        return f"segment_{self.ts}_{first_revision:0{REVISION_DIGITS}d}.json"


def manifest_name(backup_id: str) -> str:
    return BackupNames(backup_id).manifest


_INTERNAL = (".etcdwarden", "..etcdwarden")  # the lock, the hash cache and their temporary names


def internal(name: str) -> bool:
    """etcdwarden's own bookkeeping objects in a repository (not backups, not unknown)."""
    return name.startswith(_INTERNAL)
