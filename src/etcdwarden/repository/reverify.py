"""Re-prove backups against their manifests before anything relies on them (retention, ``list --verify``).

A manifest is a claim made at backup time. Before retention deletes a backup on the strength of the
ones it keeps, every kept backup's files are hashed again (streamed sha256) and compared with the
manifest; a backup whose files do not match is **corrupt**: it is reported, never counted, never
deleted automatically.

Re-reading every file on every run is avoidable: a small cache (:data:`CACHE_NAME`, an object of the
repository itself, which the catalog ignores) records, per file, the sha256 found, when, and the
file's *fingerprint* at that moment (local: size, mtime, ctime, inode and device; object stores: size,
last-modified time and the store's ETag, the store's own checksum of the object). A file whose
fingerprint is unchanged and whose recorded sha256 is the manifest's may skip the re-read, but never
for longer than ``reverify_after`` (default 7 days), so bit rot that leaves the metadata alone is
still found within that time. The cache is only an optimisation: a missing, unreadable or corrupt
cache means "hash again", and failing to write it is a note, never an error.

Object stores: a file with no usable cache record is downloaded and hashed; the bytes one run may
download are bounded (``max_verify_bytes``); what does not fit is not verified, and the caller refuses
to delete anything on its strength.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.errors import EtcdwardenError, UsageError
from etcdwarden.format.manifest import FileEntry
from etcdwarden.repository.base import CHUNK, ObjectNotFound, Repository, RepositoryError
from etcdwarden.repository.catalog import CORRUPT, Catalog, CatalogEntry, load_catalog

log = logging.getLogger(__name__)

CACHE_NAME = ".etcdwarden-hashes.json"
CACHE_FORMAT = 1
DEFAULT_REVERIFY_AFTER = dt.timedelta(days=7)
#: object stores: the most bytes one run downloads to re-hash backups (local directories: no limit)
DEFAULT_MAX_VERIFY_BYTES_REMOTE = 50 * 1024**3


@dataclass(frozen=True)
class VerifyPolicy:
    """How backups are re-proven: how long a fingerprint-matched hash may be trusted, and how many
    bytes one run may read (``None``: no limit for local directories, the remote default otherwise)."""

    reverify_after: dt.timedelta = DEFAULT_REVERIFY_AFTER
    max_verify_bytes: int | None = None
    #: what messages call the budget: the caller's flag or configuration key
    setting: str = field(default="the re-verification budget", compare=False)

    def __post_init__(self) -> None:
        if self.reverify_after < dt.timedelta(0):
            raise UsageError("--reverify-after must not be negative")
        if self.max_verify_bytes is not None and self.max_verify_bytes < 0:
            raise UsageError("--max-verify-bytes must not be negative")

    def budget(self, repo: Repository) -> int | None:
        if self.max_verify_bytes is not None:
            return self.max_verify_bytes
        return None if repo.local_path(CACHE_NAME) is not None else DEFAULT_MAX_VERIFY_BYTES_REMOTE


@dataclass
class HashCache:
    """``name -> {sha256, size, fingerprint, hashed_at}`` (see the module docstring)."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: files found not to match their manifest: name -> {fingerprint, found_at, problem}
    corrupt: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str | None = None  # why the cache was not used or could not be saved
    dirty: bool = False

    @classmethod
    def load(cls, repo: Repository) -> HashCache:
        try:
            raw = repo.read_bytes(CACHE_NAME)
        except ObjectNotFound:
            return cls()
        except RepositoryError as e:
            return cls(note=f"the hash cache could not be read ({e}); every file is hashed")
        try:
            doc = json.loads(raw)
            files = doc["files"] if isinstance(doc, dict) and doc.get("format") == CACHE_FORMAT else None
            if not isinstance(files, dict):
                raise ValueError("not a hash cache")
            good = {k: v for k, v in files.items() if isinstance(k, str) and _valid_record(v)}
            bad = doc.get("corrupt") or {}
            corrupt = {k: v for k, v in bad.items() if isinstance(v, dict) and isinstance(v.get("fingerprint"), str)
                       and isinstance(v.get("problem"), str) and isinstance(v.get("found_at"), str)} \
                if isinstance(bad, dict) else {}
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls(note=f"{repo.where(CACHE_NAME)} is not a valid hash cache; every file is hashed")
        return cls(good, corrupt)

    def fresh(self, name: str, fingerprint: str | None, sha256: str, size: int, now: dt.datetime,
              max_age: dt.timedelta) -> dt.datetime | None:
        """When ``name`` was last hashed to ``sha256`` with this fingerprint, if within ``max_age``."""
        rec = self.files.get(name)
        if rec is None or fingerprint is None or rec["fingerprint"] != fingerprint or rec["sha256"] != sha256 \
                or rec["size"] != size:
            return None
        at = dt.datetime.fromisoformat(rec["hashed_at"])
        return at if dt.timedelta(0) <= now - at < max_age else None

    def record(self, name: str, fingerprint: str, sha256: str, size: int, now: dt.datetime) -> None:
        self.files[name] = {"sha256": sha256, "size": size, "fingerprint": fingerprint,
                            "hashed_at": now.isoformat()}
        self.dirty = True

    def forget(self, name: str) -> None:
        if self.files.pop(name, None) is not None:
            self.dirty = True

    def mark_corrupt(self, name: str, fingerprint: str | None, problem: str, now: dt.datetime) -> None:
        self.forget(name)
        if fingerprint is not None:
            self.corrupt[name] = {"fingerprint": fingerprint, "found_at": now.isoformat(), "problem": problem}
            self.dirty = True

    def clear_corrupt(self, name: str) -> None:
        if self.corrupt.pop(name, None) is not None:
            self.dirty = True

    def save(self, repo: Repository, present: Iterable[str]) -> str | None:
        """Write the cache (only records of objects still present); returns a note if it failed."""
        keep = set(present)
        stale = [n for n in self.files if n not in keep] + [n for n in self.corrupt if n not in keep]
        for n in stale:
            self.files.pop(n, None)
            self.corrupt.pop(n, None)
        if not self.dirty and not stale:
            return None
        doc = {"format": CACHE_FORMAT, "files": self.files, "corrupt": self.corrupt}
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        path = repo.local_path(CACHE_NAME)
        try:
            if path is not None:
                from etcdwarden.fsutil import atomic_write

                atomic_write(path, data)
            else:
                repo.write_bytes(CACHE_NAME, data)
        except EtcdwardenError as e:
            log.info("hash cache not saved: %s", e)
            return f"the hash cache could not be saved ({e}); the next run hashes again"
        self.dirty = False
        return None


def _valid_record(v: Any) -> bool:
    if not isinstance(v, dict):
        return False
    try:
        hashed_at = dt.datetime.fromisoformat(v["hashed_at"])
    except (KeyError, TypeError, ValueError):
        return False
    return hashed_at.tzinfo is not None and isinstance(v.get("sha256"), str) and isinstance(v.get("fingerprint"), str) \
        and isinstance(v.get("size"), int) and not isinstance(v.get("size"), bool)


@dataclass
class EntryCheck:
    """The outcome of re-proving one backup."""

    id: str
    ok: bool
    problem: str | None = None
    hashed: list[str] = field(default_factory=list)  # files read and hashed in this run
    cached: dict[str, str] = field(default_factory=dict)  # files skipped -> when they were last hashed
    bytes_read: int = 0


class VerifyBudgetExceeded(EtcdwardenError):
    """Re-proving the backups would read more than ``max_verify_bytes``."""


class Verifier:
    """Re-proves catalog entries against their manifests, sharing one cache and one byte budget."""

    def __init__(self, repo: Repository, policy: VerifyPolicy | None = None, now: dt.datetime | None = None,
                 use_cache: bool = True, unbounded: bool = False, cache: HashCache | None = None) -> None:
        """``use_cache=False``: hash every file (the cache is still updated); ``unbounded``: no byte budget."""
        self.repo = repo
        self.policy = policy or VerifyPolicy()
        self.now = now or dt.datetime.now(dt.UTC)
        self.cache = cache if cache is not None else HashCache.load(repo)
        self.use_cache = use_cache
        self.budget = None if unbounded else self.policy.budget(repo)
        self.bytes_read = 0
        self.checks: dict[str, EntryCheck] = {}
        self.notes: list[str] = [self.cache.note] if self.cache.note else []

    def fingerprint(self, name: str) -> str | None:
        try:
            return self.repo.fingerprint(name)
        except RepositoryError:
            return None

    def _plan(self, entry: CatalogEntry) -> list[tuple[str, FileEntry, str | None, dt.datetime | None]]:
        """Per file of the manifest: (name, manifest record, fingerprint now, when last hashed if fresh)."""
        files = entry.manifest.files if entry.manifest is not None else {}
        out = []
        for name in sorted(files):
            want = files[name]
            fp = self.fingerprint(name)
            at = self.cache.fresh(name, fp, want.sha256, want.size, self.now, self.policy.reverify_after) \
                if self.use_cache else None
            out.append((name, want, fp, at))
        return out

    def check(self, entry: CatalogEntry) -> EntryCheck:
        """Re-prove one backup (``complete`` or ``unverified``); a mismatch marks it corrupt in place.

        Raises :class:`VerifyBudgetExceeded` (reading nothing) when its files do not fit the budget."""
        if entry.id in self.checks:
            return self.checks[entry.id]
        plan = self._plan(entry)
        need = sum(want.size for _, want, _, at in plan if at is None)
        if self.budget is not None and self.bytes_read + need > self.budget:
            raise VerifyBudgetExceeded(
                f"re-proving backup {entry.id} needs {need} more bytes read from {self.repo.url}, over the "
                f"budget of {self.budget} bytes for one run ({self.policy.setting}; {self.bytes_read} used)")
        result = EntryCheck(entry.id, ok=True)
        for name, want, before, at in plan:
            if at is not None:
                result.cached[name] = at.isoformat()
                continue
            problem = self._hash(name, want, before, result)
            if problem is not None:
                result.ok, result.problem = False, problem
                break
        if not result.ok:
            entry.state, entry.problem = CORRUPT, result.problem
        self.checks[entry.id] = result
        return result

    def _hash(self, name: str, want: FileEntry, before: str | None, result: EntryCheck) -> str | None:
        sha = hashlib.sha256()
        size = 0
        try:
            for chunk in self.repo.open_read(name, CHUNK):
                sha.update(chunk)
                size += len(chunk)
                self.bytes_read += len(chunk)
                result.bytes_read += len(chunk)
        except ObjectNotFound:
            self.cache.forget(name)
            return f"{name} is listed in the manifest but missing"
        result.hashed.append(name)
        digest = sha.hexdigest()
        after = self.fingerprint(name)
        if size != want.size or digest != want.sha256:
            problem = (f"{name}: read {size} bytes with sha256 {digest}, but the manifest records {want.size} "
                       f"bytes with sha256 {want.sha256}")
            self.cache.mark_corrupt(name, after if after == before else None, problem, self.now)
            return problem
        self.cache.clear_corrupt(name)
        if before is not None and after == before:  # unchanged while it was read: the hash belongs to it
            self.cache.record(name, before, digest, size, self.now)
        return None

    def save(self, present: Iterable[str]) -> None:
        note = self.cache.save(self.repo, present)
        if note is not None:
            self.notes.append(note)


def read_catalog(repo: Repository) -> Catalog:
    """The catalog as a reader sees it (``backups list``, restore, ``snapshot verify``, the daemon): every
    backup's state from its manifest, and ``corrupt`` where an earlier re-hash found a file that has not
    changed since (:func:`mark_known_corrupt`)."""
    catalog = load_catalog(repo)
    mark_known_corrupt(repo, catalog.entries)
    return catalog


def mark_known_corrupt(repo: Repository, entries: Iterable[CatalogEntry]) -> HashCache:
    """Mark ``corrupt`` the entries with a file an earlier re-hash found corrupt and that has not changed
    since (same fingerprint): a plain listing then says so without reading anything again."""
    cache = HashCache.load(repo)
    if not cache.corrupt:
        return cache
    for e in entries:
        if e.state not in ("complete", "unverified"):
            continue
        for name in e.data_files():
            rec = cache.corrupt.get(name)
            if rec is None:
                continue
            try:
                fp = repo.fingerprint(name)
            except RepositoryError:
                continue
            if fp == rec["fingerprint"]:
                e.state = CORRUPT
                e.problem = f"{rec['problem']} (found by re-hashing at {str(rec['found_at'])[:19]})"
                break
    return cache
