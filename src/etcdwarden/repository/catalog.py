"""The catalog of a repository: its objects grouped into backups by timestamp ID, read from the manifests.

A backup's ID is its timestamp (``2026-11-22_033053``). Its objects are the files of
:mod:`etcdwarden.backup.naming` carrying that timestamp, plus temporary names a writer may leave
behind after a crash (``<name>.part``, ``.<name>.tmp-<pid>``, ``.<snapshot>.verify.part``). Every
other object is *unknown*: listed as such, never deleted.

States:

``complete``
    the manifest parses, says ``verified: true``, and every file it lists is present with the
    recorded size. Only these count for retention (and may be restored).
``unverified``
    the manifest says the backup was not verified (``verified`` is not ``true``).
``incomplete``
    no manifest (a failed, crashed, in-progress or half-deleted backup: the manifest is the last
    object written and the first deleted), or a listed file is missing or has another size.
``unreadable``
    the manifest exists but is not valid JSON / not a manifest. Never deleted automatically.
``corrupt``
    set only by re-hashing (:mod:`.reverify`): a file's sha256 or size is not what the manifest
    records. Never counted, never deleted automatically.

Listing reads the manifests and the objects' sizes only; a backup's files are hashed again only by
:mod:`.reverify` (``backups list --verify``, and retention before it deletes anything), so a plain
listing says ``complete``, never that the bytes were re-proven. Objects of etcdwarden's own
bookkeeping (the lock, the hash cache: names starting with ``.etcdwarden``) are neither backups nor
*unknown*.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.errors import UsageError
from etcdwarden.repository.base import ObjectInfo, Repository, RepositoryError

TS = r"\d{4}-\d{2}-\d{2}_\d{6}"
TS_RE = re.compile(rf"^{TS}$")
_BASES = (rf"snapshot_(?P<s>{TS})\.db(?:\.zst)?(?:\.age)?",
          rf"static_kuberesources_(?P<r>{TS})\.tar\.gz(?:\.age)?",
          rf"backup_(?P<m>{TS})\.json")
DATA_RE = re.compile(rf"^(?:{_BASES[0]}|{_BASES[1]})$")
MANIFEST_RE = re.compile(rf"^{_BASES[2]}$")
TEMP_RE = re.compile(rf"^\.?(?:{_BASES[0]}(?:\.verify)?|{_BASES[1]}|{_BASES[2]})(?:\.part|\.tmp-\d+)$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
GOOD = "complete"
CORRUPT = "corrupt"
_INTERNAL = (".etcdwarden", "..etcdwarden")  # the lock, the hash cache and their temporary names


def internal(name: str) -> bool:
    """etcdwarden's own bookkeeping objects in a repository (not backups, not unknown)."""
    return name.startswith(_INTERNAL)


def parse_id(backup_id: str) -> dt.datetime:
    if not TS_RE.match(backup_id):
        raise UsageError(f"{backup_id!r} is not a backup ID (YYYY-MM-DD_HHMMSS)")
    try:
        return dt.datetime.strptime(backup_id, "%Y-%m-%d_%H%M%S").replace(tzinfo=dt.UTC)
    except ValueError:
        raise UsageError(f"{backup_id!r} is not a valid timestamp") from None


def classify(name: str) -> tuple[str, str] | None:
    """``(kind, id)`` with kind ``manifest``/``data``/``temp``, or ``None`` for an unknown object."""
    for kind, regex in (("manifest", MANIFEST_RE), ("data", DATA_RE), ("temp", TEMP_RE)):
        m = regex.match(name)
        if m:
            ts = next(v for v in m.groupdict().values() if v)
            return kind, ts
    return None


@dataclass
class CatalogEntry:
    """One backup (complete or not) of a repository."""

    id: str
    time: dt.datetime
    state: str
    problem: str | None = None
    objects: list[ObjectInfo] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    manifest_name: str | None = None

    @property
    def good(self) -> bool:
        return self.state == GOOD

    @property
    def size(self) -> int:
        """Bytes of every object of this backup in the repository (manifest included)."""
        return sum(o.size for o in self.objects)

    @property
    def last_modified(self) -> dt.datetime:
        return max([self.time, *(o.mtime for o in self.objects)])

    def _m(self, *path: str) -> Any:
        cur: Any = self.manifest
        for p in path:
            if not isinstance(cur, dict):
                return None
            cur = cur.get(p)
        return cur

    @property
    def revision(self) -> int | None:
        v = self._m("revision")
        return v if isinstance(v, int) else None

    @property
    def member(self) -> str | None:
        v = self._m("member", "name")
        return str(v) if v is not None else None

    @property
    def verified(self) -> bool:
        """The manifest says verified *and* the backup is complete (never for incomplete or corrupt ones)."""
        return self.good and self._m("verified") is True

    @property
    def key_names(self) -> list[str]:
        v = self._m("encryption_at_rest", "key_names")
        return [str(k) for k in v] if isinstance(v, list) else []

    def data_files(self) -> list[str]:
        """Names the manifest lists (data first, in a stable order)."""
        files = self._m("files")
        return sorted(files) if isinstance(files, dict) else []

    def as_json(self, repo: Repository) -> dict[str, Any]:
        return {
            "id": self.id, "time": self.time.isoformat(), "state": self.state, "problem": self.problem,
            "verified": self.verified, "manifest_verified": self._m("verified") is True,
            "revision": self.revision, "member": self.member,
            "cluster_id": self._m("cluster_id"), "db_size": self._m("db_size"), "size": self.size,
            "encryption_keys": self.key_names, "compression": self._m("snapshot", "compression"),
            "encryption": self._m("snapshot", "encryption"),
            "where": repo.where(self.manifest_name) if self.manifest_name else repo.url,
            "objects": [o.name for o in self.objects],
        }


@dataclass
class Catalog:
    url: str
    entries: list[CatalogEntry]  # oldest first
    unknown: list[str]

    @property
    def good(self) -> list[CatalogEntry]:
        return [e for e in self.entries if e.good]

    def newest_good(self) -> CatalogEntry | None:
        good = self.good
        return good[-1] if good else None

    def get(self, backup_id: str) -> CatalogEntry:
        parse_id(backup_id)
        for e in self.entries:
            if e.id == backup_id:
                return e
        raise UsageError(f"{self.url}: no backup {backup_id} (see `etcdwarden backups list`)")


def check_manifest(doc: Any, backup_id: str) -> str | None:
    """The first problem with a manifest document, or ``None`` when its shape is right."""
    if not isinstance(doc, dict):
        return "the manifest is not a JSON object"
    if doc.get("timestamp", backup_id) != backup_id:
        return f"the manifest's timestamp {doc.get('timestamp')!r} is not its name's {backup_id}"
    files = doc.get("files")
    if not isinstance(files, dict) or not files:
        return 'the manifest has no "files" map'
    for name, entry in files.items():
        if not isinstance(name, str) or classify(name) != ("data", backup_id):
            return f"the manifest lists {name!r}, not a file of backup {backup_id}"
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not _SHA_RE.match(entry["sha256"]) or not isinstance(entry.get("size"), int) \
                or isinstance(entry.get("size"), bool) or entry["size"] < 0:
            return f"the manifest's entry for {name} has no valid sha256/size"
    if not any(n.startswith("snapshot_") for n in files):
        return "the manifest lists no snapshot file"
    return None


def _judge(entry: CatalogEntry, raw: bytes) -> None:
    try:
        doc = json.loads(raw)
    except ValueError as e:
        entry.state, entry.problem = "unreadable", f"the manifest is not valid JSON: {e}"
        return
    problem = check_manifest(doc, entry.id)
    if problem is not None:
        entry.state, entry.problem = "unreadable", problem
        return
    entry.manifest = doc
    present = {o.name: o.size for o in entry.objects}
    for name, f in doc["files"].items():
        if name not in present:
            entry.state, entry.problem = "incomplete", f"{name} is listed in the manifest but missing"
            return
        if present[name] != f["size"]:
            entry.state, entry.problem = "incomplete", \
                f"{name} is {present[name]} bytes but the manifest records {f['size']}"
            return
    if doc.get("verified") is not True:
        entry.state, entry.problem = "unverified", "the manifest says the backup was not verified"
        return
    entry.state, entry.problem = GOOD, None


def load_catalog(repo: Repository) -> Catalog:
    """List the repository and read every manifest (small JSON objects)."""
    groups: dict[str, list[ObjectInfo]] = {}
    unknown: list[str] = []
    for obj in repo.list():
        if internal(obj.name):
            continue
        c = classify(obj.name)
        if c is None:
            unknown.append(obj.name)
            continue
        try:
            parse_id(c[1])
        except UsageError:  # e.g. month 13: not one of ours after all
            unknown.append(obj.name)
            continue
        groups.setdefault(c[1], []).append(obj)
    entries: list[CatalogEntry] = []
    for ts in sorted(groups):
        objs = sorted(groups[ts], key=lambda o: o.name)
        e = CatalogEntry(ts, parse_id(ts), "incomplete", "no manifest (failed, interrupted or in progress)", objs)
        manifest = next((o.name for o in objs if MANIFEST_RE.match(o.name)), None)
        if manifest is not None:
            e.manifest_name = manifest
            try:
                raw = repo.read_bytes(manifest)
            except RepositoryError as err:
                e.state, e.problem = "unreadable", str(err)
            else:
                _judge(e, raw)
        entries.append(e)
    return Catalog(repo.url, entries, sorted(unknown))


def delete_backup(repo: Repository, entry: CatalogEntry) -> list[str]:
    """Delete one backup: its manifest first (so it stops being a backup at once), then its other
    objects. Only objects of this backup's ID are touched. Returns the names deleted."""
    names = [o.name for o in entry.objects]
    order = sorted(names, key=lambda n: (0 if MANIFEST_RE.match(n) else 1, n))
    done: list[str] = []
    for name in order:
        repo.delete(name)
        done.append(name)
        if MANIFEST_RE.match(name):
            repo.sync()
    repo.sync()
    return done
