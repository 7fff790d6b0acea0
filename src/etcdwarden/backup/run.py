"""Take one backup: preflight, stream the snapshot, verify, bundle resources, write the manifest last.

Every byte goes through the repository's one write path (``Repository.open_write`` → ``Writer``), for a
local directory as for an object store. Nothing appears under its final name before it has been
verified, and the manifest (the thing that makes a set of objects "a backup") is written last. Any
failure discards every writer of this run (no ``.part`` file, no visible upload) and leaves earlier
backups untouched.

The structure walk of ``--verify full`` reads the stream itself as it passes
(:mod:`etcdwarden.snapshot.streamcheck`), for every repository and encoding: nothing is read back, so a local
snapshot is written past the page cache (``open_write(..., bulk=True)``: filling the page cache was most of
a local backup's CPU time). The page summaries are spilled next to the repository when it is local, in a
private temporary directory of the system's otherwise. No copy of the database is written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etcdwarden import __version__, memory
from etcdwarden.backup.hashkv import HashKVProbe
from etcdwarden.backup.preflight import Candidate, Preflight, preflight
from etcdwarden.backup.resources import CertificateNote, certificate_notes, check_paths, write_bundle
from etcdwarden.backup.stream import TRAILER, Crc, EncodedSink, SnapshotStreamError, StreamPipe, StreamResult
from etcdwarden.errors import (
    AuthenticationFailed,
    EtcdError,
    EtcdwardenError,
    PermissionDenied,
    SafetyRefusal,
    UsageError,
    setting,
)
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.format.names import BackupNames, timestamp
from etcdwarden.fsutil import DiskFull, LockInfo, private_dir, raise_os_error
from etcdwarden.repository.base import Repository, RepositoryError, Writer, open_repository
from etcdwarden.repository.local import LocalRepository
from etcdwarden.snapshot.errors import SnapshotCorrupt
from etcdwarden.snapshot.scratch import new_private_dir, sweep
from etcdwarden.snapshot.status import SnapshotStatus
from etcdwarden.snapshot.streamcheck import StreamCheck

if TYPE_CHECKING:
    from etcdwarden.format.manifest import HashKV, Manifest

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (member, bytes received, bytes expected)


@dataclass
class BackupOptions:
    directory: str | Path  # a directory, file:// URL or object-store URL (s3://, gs://, az://)
    resources: list[Path] = field(default_factory=list)
    resources_dir: Path | None = None
    compress: str | None = None  # None or "zstd"
    recipients: list[str] = field(default_factory=list)  # age recipients
    member: str | None = None
    force: bool = False
    release: str | None = None
    verify: str = "full"  # "full" (structure + status) or "hash" (sha256 trailer only)
    lock_wait: float = 0.0
    max_attempts: int = 3
    key_names: list[str] = field(default_factory=list)  # encryption-at-rest keys in use
    encryption_config: Path | None = None  # the EncryptionConfiguration: keys recorded, file bundled
    repository_options: Any = None  # etcdwarden.repository.base.RepositoryOptions for object stores
    static_pods: dict[str, Any] | None = None  # resources.static_pods of the manifest (backup.static_pods)


@dataclass
class BackupResult:
    directory: Path | None  # the repository as a local directory (None for object stores)
    manifest_path: Path | None  # the manifest as a local file (None for object stores)
    manifest: dict[str, Any]
    warnings: list[str]
    location: str = ""  # where the manifest now lives (path or URL, no credentials)

    @property
    def status_line(self) -> dict[str, Any]:
        """``etcdutl snapshot status``'s JSON figures; those not computed (``--verify hash`` has no structure
        walk: no ``hash``, no ``totalKey``) are left out, never ``null``."""
        st = self.manifest.get("status") or {}
        line = {"hash": st.get("hash"), "revision": st.get("revision", self.manifest.get("revision")),
                "totalKey": st.get("totalKey"), "totalSize": st.get("totalSize", self.manifest.get("db_size"))}
        return {k: v for k, v in line.items() if v is not None}


def _recipients(texts: list[str]) -> list[Any]:
    if not texts:
        return []
    import pyrage

    out: list[Any] = []
    for t in texts:
        try:
            if t.startswith("age1"):
                out.append(pyrage.x25519.Recipient.from_str(t))
            else:
                out.append(pyrage.ssh.Recipient.from_str(t))
        except Exception:  # pyrage raises its own RecipientError
            raise UsageError(f"{setting('encrypt_to')} {t[:20]}...: not an age (age1...) or SSH public key "
                             "recipient") from None
    return out


def _free_timestamp(repos: list[Repository]) -> str:
    """A timestamp no object of an earlier backup uses (waits for the next second if needed)."""
    while True:
        ts = timestamp()
        names = {o.name for r in repos for o in r.list()}
        if not any(ts in name for name in names):
            return ts
        time.sleep(0.2)


async def _stream(client: EtcdClient, cand: Candidate, pipe: StreamPipe, progress: Progress | None) -> StreamResult:
    received = 0
    expected = 0
    try:
        async for chunk in client.snapshot(cand.endpoint):
            blob = chunk.blob
            if not expected:
                expected = int(chunk.remaining_bytes) + len(blob)
            pipe.feed(blob, int(chunk.remaining_bytes))
            received += len(blob)
            if progress is not None:
                progress(cand.name, received, expected + 32)
        return await asyncio.to_thread(pipe.close)
    except BaseException:
        pipe.abort()  # the worker stops before the caller discards the writers it writes to
        raise


async def take_backup(client: EtcdClient, opts: BackupOptions, progress: Progress | None = None) -> BackupResult:
    """Take one verified backup into ``opts.directory`` (a directory, ``file://`` or object-store URL)."""
    if opts.compress not in (None, "zstd"):
        raise UsageError(f"unsupported compression {opts.compress!r}; use zstd")
    if opts.verify not in ("full", "hash"):
        raise UsageError("--verify must be full or hash")
    if opts.encryption_config is not None:
        _encryption_at_rest(opts)
    resources = check_paths(opts.resources) if opts.resources else []
    recipients = _recipients(opts.recipients)
    with open_repository(opts.directory, opts.repository_options) as repo:
        res_repo = repo if opts.resources_dir is None else LocalRepository(_private(opts.resources_dir))
        with repo.lock(opts.lock_wait, create=True) as lock:
            notes = _clean_after_dead_run(repo, lock) if lock is not None else []
            pre = await preflight(client, force=opts.force, member=opts.member)
            if not pre.candidates:
                raise EtcdwardenError("no member can serve a snapshot")
            ts = _free_timestamp([repo] if res_repo is repo else [repo, res_repo])
            run = _Run(opts, repo, res_repo, BackupNames(ts, opts.compress, bool(recipients)), recipients,
                       [*notes, *pre.warnings])
            try:
                chosen, result = await run.snapshot(client, pre.candidates, progress)
                # what a drill reproduces, asked of the member while the snapshot is verified and made durable
                probe = HashKVProbe(asyncio.get_running_loop(), client, chosen,
                                    await asyncio.to_thread(run.revision_hint, chosen))

                def commit() -> dict[str, Any]:
                    try:
                        status, verification = run.verify_and_commit(result)
                    except BaseException:
                        probe.cancel()
                        raise
                    hash_kv = probe.result(status, run.warnings)
                    return run.finish(pre, chosen, result, status, verification, resources, hash_kv)

                # A thread cannot be cancelled: when the task is (SIGTERM, lost leadership), let the commit end
                # before the lock is released, so no half-committed backup is left behind unlocked.
                work = asyncio.ensure_future(asyncio.to_thread(commit))
                try:
                    manifest = await asyncio.shield(work)
                except asyncio.CancelledError:
                    with contextlib.suppress(BaseException):
                        await work
                    raise
            finally:
                run.close()
            where = repo.local_directory()
            return BackupResult(where, where / run.names.manifest if where is not None else None, manifest,
                                run.warnings, location=repo.where(run.names.manifest))


def _private(directory: Path) -> Path:
    try:
        return private_dir(directory)
    except OSError as e:
        raise_os_error(e, directory)


def _clean_after_dead_run(repo: Repository, lock: LockInfo) -> list[str]:
    """Remove the temporary files a killed run left in the repository (we hold its lock); say so."""
    done = repo.remove_stale(lock)
    notes = []
    if done.removed:
        who = f" (pid {lock.previous.pid})" if lock.previous is not None else ""
        notes.append(f"removed {len(done.removed)} temporary file(s) left in {repo.url} by an earlier run that "
                     f"is gone{who}: {', '.join(done.removed)}")
        log.info("removed stale temporary files: %s", ", ".join(done.removed))
    for name, why in done.left.items():
        log.info("left %s in %s: %s", name, repo.url, why)
    return notes


class _Run:
    """The writers and steps of one backup run (so that every failure path discards what it wrote)."""

    def __init__(self, opts: BackupOptions, repo: Repository, res_repo: Repository, names: BackupNames,
                 recipients: list[Any], warnings: list[str]) -> None:
        self.opts, self.repo, self.res_repo, self.names = opts, repo, res_repo, names
        self.recipients, self.warnings = recipients, warnings
        self.encode = bool(opts.compress or recipients)
        # the structure walk and status need the plain database; never for an encrypted backup (no plaintext
        # is ever written for it), and not with --verify hash
        self.structure = opts.verify == "full" and not recipients
        self.roundtrip = opts.compress == "zstd" and not recipients and opts.verify == "full"
        self.final: Writer | None = None  # the snapshot object
        self.encoded: EncodedSink | None = None
        self.received = Crc()  # CRC-32C of the bytes received, when the encoded output is decoded to compare
        self.check: StreamCheck | None = None  # the structure walk made from the stream, when no plain file is kept
        self._scratch: Path | None = None  # a temporary directory of ours holding its summaries

    def _stream_check(self) -> StreamCheck:
        """A check of the stream, its summaries next to a local repository (a name the next run removes if we
        are killed), else in a private directory of the system's temporary directory, named after this process:
        the next run removes one whose process is gone (killed outright, it could not)."""
        where = self.repo.local_directory()
        if where is None:
            if self._scratch is None:
                tmp = Path(tempfile.gettempdir())
                what = "a backup's check summaries (etcd keys)"
                for note in sweep(tmp, what):
                    self.warnings.append(note)
                try:
                    self._scratch = new_private_dir(tmp)
                except OSError as e:
                    raise_os_error(e, tmp)
            return StreamCheck(self._scratch / "summaries")
        try:
            return StreamCheck(where / f".{self.names.snapshot}.verify.tmp-{os.getpid()}")
        except OSError as e:
            raise_os_error(e, where)

    def _open(self) -> StreamPipe:
        self.final = self.repo.open_write(self.names.snapshot, bulk=True)
        sinks: list[Callable[[bytes], object]] = []
        if self.encode:
            self.final.hashed = True  # the stream's hash covers the plain bytes; the object's bytes are encoded
            self.encoded = EncodedSink(self.final, bool(self.opts.compress), self.recipients, self.roundtrip)
            sinks.append(self.encoded.write)
            if self.encoded.roundtrip is not None:  # what the decoded output must equal
                self.received = Crc()
                sinks.append(self.received)
        else:
            self.final.hashed = False  # StreamResult.file_sha256 is the object's sha256: no second hashing
            sinks.append(self.final.write)
        if self.structure:
            self.check = self._stream_check()
            sinks.append(self.check.feed)
        return StreamPipe(sinks)

    def discard(self) -> None:
        for s in (self.encoded, self.final):
            if s is not None:
                s.discard()
        if self.check is not None:
            self.check.close()
        self.final = self.encoded = self.check = None

    def close(self) -> None:
        self.discard()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    async def snapshot(self, client: EtcdClient, candidates: list[Candidate],
                       progress: Progress | None) -> tuple[Candidate, StreamResult]:
        attempts: list[str] = []
        for cand in candidates[: self.opts.max_attempts]:
            try:
                pipe = self._open()
                result = await _stream(client, cand, pipe, progress)
                if self.encoded is not None:
                    await asyncio.to_thread(self.encoded.finish)
            except (PermissionDenied, AuthenticationFailed):
                self.discard()  # the same answer from every member: asking the next one would only repeat it
                raise
            except (EtcdError, SnapshotStreamError) as e:
                attempts.append(f"{cand.name}: {e}")
                log.warning("snapshot from %s failed: %s", cand.name, e)
                self.discard()
                continue
            except BaseException:
                self.discard()
                raise
            if attempts:
                self.warnings.append("retried after: " + "; ".join(attempts))
            return cand, result
        raise EtcdwardenError("the snapshot failed on every member tried: " + "; ".join(attempts))

    def revision_hint(self, chosen: Candidate) -> int | None:
        """The revision the manifest will record, known before the verification: the snapshot's last revision
        key as the stream showed it when its structure is to be walked, else the member's revision before the
        snapshot."""
        if self.check is not None and self.check.revision_seen > 0:
            return self.check.revision_seen
        st = chosen.status.status
        return int(st.header.revision) if st is not None else None

    def verify_and_commit(self, result: StreamResult) -> tuple[SnapshotStatus | None, dict[str, Any]]:
        """Verify, then commit the snapshot object (an object store completes its upload only now)."""
        memory.trim()  # what the stream's buffers occupied goes back before the walk and the manifest add theirs
        try:
            status, verification = self._verify(result)
            assert self.final is not None
            self.final.commit()
            self.final = None
            if self.check is not None:
                self.check.close()
                self.check = None
            return status, verification
        except BaseException:
            self.discard()
            raise

    def _verify(self, result: StreamResult) -> tuple[SnapshotStatus | None, dict[str, Any]]:
        v: dict[str, Any] = {"sha256_trailer": True, "structure": False, "roundtrip": None}
        status: SnapshotStatus | None = None
        if self.structure:
            final = self.final
            assert final is not None
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="etcdwarden-sync") as pool:
                # the slow part of the commit (fsync of the snapshot) runs while the structure is walked
                synced = pool.submit(final.sync)
                assert self.check is not None
                try:
                    status, pages, _entries = self.check.finish()
                except SnapshotCorrupt as e:
                    raise SnapshotCorrupt(f"{self.names.snapshot}: {e}") from e
                synced.result()
            v["structure"] = True
            v["pages_checked"] = pages
        if self.roundtrip and self.encoded is not None:
            if self.encoded.roundtrip != self.received or self.received.length != result.db_size + TRAILER:
                raise EtcdwardenError(f"{self.names.snapshot}: the compressed snapshot does not decompress to the "
                                      "bytes received")
            v["roundtrip"] = True
        return status, v

    def finish(self, pre: Preflight, chosen: Candidate, result: StreamResult, status: SnapshotStatus | None,
               verification: dict[str, Any], resources: list[Path], hash_kv: HashKV | None = None) -> dict[str, Any]:
        """Resources bundle, then the manifest, last; on failure remove what this run committed."""
        n = self.names
        snap = self.encoded.file if self.encoded is not None else None
        sha = snap.sha.hexdigest() if snap is not None else result.file_sha256
        size = snap.size if snap is not None else result.db_size + 32
        files: dict[str, dict[str, Any]] = {n.snapshot: {"sha256": sha, "size": size}}
        committed: list[tuple[Repository, str]] = [(self.repo, n.snapshot)]
        try:
            bundle: dict[str, Any] | None = None
            notes: list[CertificateNote] = []
            if resources:
                bundle, notes = _write_resources(resources, self.res_repo, n, self.recipients)
                committed.append((self.res_repo, n.resources))
                if self.res_repo is self.repo:
                    files[n.resources] = {"sha256": bundle["sha256"], "size": bundle["size"]}
                for note in notes:
                    self.warnings.append(f"certificate {note.subject} in {note.path}: {note.problem}")
                if bundle["skipped"]:
                    self.warnings.append("left out of the resources bundle (no content to restore): "
                                         + ", ".join(bundle["skipped"]))
            res_dir = self.res_repo.local_directory()
            manifest = _manifest(pre, chosen, n, result, status, verification, files, bundle, notes, self.opts,
                                 res_dir, hash_kv)
            from etcdwarden.format.manifest import dump

            self.repo.write_bytes(n.manifest, dump(manifest))
            return manifest.as_json()
        except BaseException:
            for repo, name in committed:  # no manifest → these objects are not a backup; remove them
                with contextlib.suppress(RepositoryError, OSError):
                    repo.delete(name)
            raise


def _encryption_at_rest(opts: BackupOptions) -> None:
    """Record the key names, bundle the configuration, refuse during a migration (partly encrypted data)."""
    from etcdwarden.encryption.config import EncryptionConfiguration
    from etcdwarden.encryption.ops import default_state_path
    from etcdwarden.encryption.state import migration_in_progress

    path = opts.encryption_config
    assert path is not None
    cfg = EncryptionConfiguration.load(path)
    opts.key_names = sorted(set(opts.key_names) | cfg.key_names())
    if path.resolve() not in [p.resolve() for p in opts.resources if p.exists()]:
        opts.resources.append(path)
    state = default_state_path(path)
    if migration_in_progress(state) and not opts.force:
        raise SafetyRefusal(f"an encryption migration is in progress ({state}): a backup now would be only partly "
                            "encrypted; finish `etcdwarden encryption migrate` first")


def _write_resources(paths: list[Path], repo: Repository, names: BackupNames,
                     recipients: list[Any]) -> tuple[dict[str, Any], list[CertificateNote]]:
    notes = certificate_notes(paths)
    out = repo.open_write(names.resources)
    sink: Any = EncodedSink(out, False, recipients) if recipients else out
    try:
        skipped: list[str] = []
        count = write_bundle(paths, sink, skipped)
        if recipients:
            sink.finish()
        out.commit()
    except BaseException:
        sink.discard()
        raise
    return {"sha256": out.sha.hexdigest(), "size": out.size, "files": count, "skipped": skipped}, notes


def _manifest(pre: Preflight, chosen: Candidate, names: BackupNames, result: StreamResult,
              status: SnapshotStatus | None, verification: dict[str, Any], files: dict[str, dict[str, Any]],
              bundle: dict[str, Any] | None, notes: list[CertificateNote], opts: BackupOptions,
              res_dir: Path | None, hash_kv: HashKV | None = None) -> Manifest:
    """The manifest of this backup (:mod:`etcdwarden.format.manifest`), validated when written."""
    from etcdwarden.format.manifest import FORMAT, Manifest
    st = chosen.status.status
    assert st is not None
    versions = sorted({s.status.version for s in pre.statuses if s.status})
    return Manifest.model_validate({
        "format": FORMAT,
        "tool": {"name": "etcdwarden", "version": __version__},
        "timestamp": names.ts,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "cluster_id": f"{st.header.cluster_id:x}",
        "member": {"id": f"{chosen.member.ID:x}", "name": chosen.member.name, "endpoint": chosen.endpoint.raw,
                   "was_leader": chosen.status.is_leader},
        "etcd": {"server_version": st.version, "member_versions": versions, "storage_version": st.storageVersion},
        "release": opts.release,
        # the store's revision (what etcd's own restore of the snapshot resumes at; a continuous-backup chain
        # starts after it), not etcdutl's last-key revision, which is short after trailing deletes were compacted
        "revision": status.store_revision if status else int(st.header.revision),
        "raft_index": int(st.raftIndex),
        "raft_term": int(st.raftTerm),
        "db_size": result.db_size,
        "db_size_in_use": int(st.dbSizeInUse),
        "db_sha256": result.db_sha256,
        "status": status.as_json() if status else None,
        "hash_kv": hash_kv.model_dump() if hash_kv is not None else None,
        "snapshot": {"file": names.snapshot, "compression": opts.compress,
                     "encryption": "age" if opts.recipients else None},
        "resources": None if bundle is None else {
            "file": names.resources, "directory": str(res_dir) if res_dir is not None else None,
            "paths": [str(p) for p in opts.resources],
            "files": bundle["files"], "sha256": bundle["sha256"], "size": bundle["size"],
            "skipped": bundle["skipped"],
            "certificates": [n.as_json() for n in notes], "static_pods": opts.static_pods},
        "encryption_at_rest": {"key_names": list(opts.key_names)},
        "alarms": [int(a.alarm) for a in pre.alarms],
        "files": files,
        "verified": True,
        "verification": verification,
    })


__all__ = ["BackupOptions", "BackupResult", "DiskFull", "take_backup"]
