"""Take one backup: preflight, stream the snapshot, verify, bundle resources, write the manifest last.

Nothing is renamed into its final name before it has been verified, and the manifest (the thing that
makes a set of files "a backup") is written last, atomically. Any failure removes every ``.part``
file of this run and leaves earlier backups untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from etcdwarden import __version__
from etcdwarden.backup.hashkv import record_hash_kv
from etcdwarden.backup.preflight import Candidate, Preflight, preflight
from etcdwarden.backup.resources import CertificateNote, certificate_notes, check_paths, write_bundle
from etcdwarden.backup.stream import EncodedSink, FileSink, SnapshotStreamError, StreamResult, TrailerChecker
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
from etcdwarden.format.manifest import FORMAT, HashKV, Manifest, dump
from etcdwarden.format.names import BackupNames, timestamp
from etcdwarden.fsutil import DiskFull, LockInfo, dir_lock, fsync_dir, private_dir
from etcdwarden.snapshot.status import SnapshotStatus
from etcdwarden.snapshot.verify import verify_db

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
    directory: Path  # where the files were written locally (a temporary staging dir for object stores)
    manifest_path: Path
    manifest: dict[str, Any]
    warnings: list[str]
    location: str = ""  # where the manifest now lives (path or URL, no credentials)

    @property
    def status_line(self) -> dict[str, Any]:
        st = self.manifest.get("status") or {}
        return {"hash": st.get("hash"), "revision": st.get("revision", self.manifest.get("revision")),
                "totalKey": st.get("totalKey"), "totalSize": st.get("totalSize", self.manifest.get("db_size"))}


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


def _free_timestamp(dirs: list[Path], taken: Callable[[], set[str]]) -> str:
    """A timestamp no file of an earlier backup uses (waits for the next second if needed)."""
    while True:
        ts = timestamp()
        names = {p.name for d in dirs if d.exists() for p in d.iterdir()} | taken()
        if not any(ts in name for name in names):
            return ts
        time.sleep(0.2)


async def _stream(client: EtcdClient, cand: Candidate, plain: FileSink | None, encoded: EncodedSink | None,
                  progress: Progress | None) -> StreamResult:
    checker = TrailerChecker()
    received = 0
    async for chunk in client.snapshot(cand.endpoint):
        blob = bytes(chunk.blob)
        checker.feed(blob, int(chunk.remaining_bytes))
        if plain is not None:
            plain.write(blob)
        if encoded is not None:
            encoded.write(blob)
        received += len(blob)
        if progress is not None:
            progress(cand.name, received, (checker.expected or 0) + 32)
    return checker.result()


def _roundtrip_zstd(path: Path, expected_sha: str) -> None:
    sha = hashlib.sha256()
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
        while chunk := r.read(1 << 20):
            sha.update(chunk)
    if sha.hexdigest() != expected_sha:
        raise EtcdwardenError(f"{path}: the compressed snapshot does not decompress to the bytes received")


async def take_backup(client: EtcdClient, opts: BackupOptions, progress: Progress | None = None) -> BackupResult:
    """Take one verified backup into ``opts.directory`` (a directory, ``file://`` or object-store URL)."""
    from etcdwarden.repository.target import BackupTarget

    if opts.compress not in (None, "zstd"):
        raise UsageError(f"unsupported compression {opts.compress!r}; use zstd")
    if opts.verify not in ("full", "hash"):
        raise UsageError("--verify must be full or hash")
    if opts.encryption_config is not None:
        _encryption_at_rest(opts)
    resources = check_paths(opts.resources) if opts.resources else []
    recipients = _recipients(opts.recipients)
    with BackupTarget(opts.directory, opts.repository_options) as target:
        directory = target.staging
        res_dir = private_dir(opts.resources_dir) if opts.resources_dir else directory
        with dir_lock(directory, opts.lock_wait) as lock:
            notes = _clean_after_dead_run(directory, lock) if target.local else []
            pre = await preflight(client, force=opts.force, member=opts.member)
            if not pre.candidates:
                raise EtcdwardenError("no member can serve a snapshot")
            ts = _free_timestamp([directory, res_dir], target.names)
            run = _Run(opts, target, res_dir, BackupNames(ts, opts.compress, bool(recipients)), recipients,
                       [*notes, *pre.warnings])
            chosen, result = await run.snapshot(client, pre.candidates, progress)
            loop = asyncio.get_running_loop()

            def commit() -> dict[str, Any]:
                status, verification, final = run.verify_and_commit(result)
                hash_kv = record_hash_kv(loop, client, chosen, status, run.warnings)  # what a drill reproduces
                return run.finish(pre, chosen, result, status, verification, final, resources, hash_kv)

            # A thread cannot be cancelled: when the task is (SIGTERM, lost leadership), let the commit end
            # before the directory lock is released, so no half-committed backup is left behind unlocked.
            work = asyncio.ensure_future(asyncio.to_thread(commit))
            try:
                manifest = await asyncio.shield(work)
            except asyncio.CancelledError:
                with contextlib.suppress(BaseException):
                    await work
                raise
            return BackupResult(directory, directory / run.names.manifest, manifest, run.warnings,
                                location=target.where(run.names.manifest))


def _clean_after_dead_run(directory: Path, lock: LockInfo) -> list[str]:
    """Remove the temporary files a killed run left in the repository (we hold its lock); say so."""
    from etcdwarden.repository.local import remove_stale_temp

    done = remove_stale_temp(directory, lock)
    notes = []
    if done.removed:
        who = f" (pid {lock.previous.pid})" if lock.previous is not None else ""
        notes.append(f"removed {len(done.removed)} temporary file(s) left in {directory} by an earlier run that "
                     f"is gone{who}: {', '.join(done.removed)}")
        log.info("removed stale temporary files: %s", ", ".join(done.removed))
    for name, why in done.left.items():
        log.info("left %s in %s: %s", name, directory, why)
    return notes


class _Run:
    """The sinks and steps of one backup run (so that every failure path discards what it wrote)."""

    def __init__(self, opts: BackupOptions, target: Any, res_dir: Path, names: BackupNames,
                 recipients: list[Any], warnings: list[str]) -> None:
        self.opts, self.target, self.res_dir, self.names = opts, target, res_dir, names
        self.recipients, self.warnings = recipients, warnings
        self.directory: Path = target.staging
        self.encode = bool(opts.compress or recipients)
        # A plain copy is needed for the structure walk and status of an encoded backup; never write
        # plaintext next to an encrypted backup, and skip it when only the hash is to be verified.
        self.keep_plain = not recipients and (not self.encode or opts.verify == "full")
        self.roundtrip = opts.compress == "zstd" and not recipients and opts.verify == "full"
        self.plain: Any = None
        self.encoded: EncodedSink | None = None

    def _open(self) -> None:
        n, full = self.names, self.opts.verify == "full"
        if self.encode:
            # the stream's own hash (StreamResult.file_sha256) covers the plain bytes: no second pass
            self.plain = FileSink(self.directory / f".{n.snapshot}.verify", hashed=False) if self.keep_plain \
                else None
            self.encoded = EncodedSink(self.directory / n.snapshot, bool(self.opts.compress), self.recipients,
                                       file=self.target.sink(n.snapshot, local_copy=self.roundtrip))
        else:
            # a local copy only where the structure walk needs one (object stores stream otherwise)
            self.plain = self.target.sink(n.snapshot, local_copy=full, hashed=False)
            self.encoded = None

    def discard(self) -> None:
        for s in (self.plain, self.encoded):
            if s is not None:
                s.discard()

    async def snapshot(self, client: EtcdClient, candidates: list[Candidate],
                       progress: Progress | None) -> tuple[Candidate, StreamResult]:
        attempts: list[str] = []
        for cand in candidates[: self.opts.max_attempts]:
            self._open()
            try:
                result = await _stream(client, cand, self.plain, self.encoded, progress)
                if self.plain is not None:
                    await asyncio.to_thread(self.plain.finish)
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

    def verify_and_commit(self, result: StreamResult) -> tuple[SnapshotStatus | None, dict[str, Any], Any]:
        try:
            status, verification = _verify(self.opts, self.plain, self.encoded, result)
            final = self.encoded.file if self.encoded is not None else self.plain
            final.commit()  # the snapshot under its final name (an object store completes the upload)
            if self.plain is not None and self.encoded is not None:
                self.plain.discard()
            fsync_dir(self.directory)
            return status, verification, final
        except BaseException:
            self.discard()
            raise

    def finish(self, pre: Preflight, chosen: Candidate, result: StreamResult, status: SnapshotStatus | None,
               verification: dict[str, Any], final: Any, resources: list[Path],
               hash_kv: HashKV | None = None) -> dict[str, Any]:
        """Resources bundle, then the manifest, last; on failure remove what this run committed."""
        n = self.names
        sha = final.sha.hexdigest() if self.encoded is not None else result.file_sha256
        files: dict[str, dict[str, Any]] = {n.snapshot: {"sha256": sha, "size": final.size}}
        committed: list[str] = [n.snapshot]
        local_bundle: Path | None = None
        try:
            bundle: dict[str, Any] | None = None
            notes: list[CertificateNote] = []
            if resources:
                in_repo = self.res_dir == self.directory
                sink = self.target.sink(n.resources, local_copy=False) if in_repo else None
                bundle, notes = _write_resources(resources, self.res_dir, n, self.recipients, sink)
                if in_repo:
                    files[n.resources] = {"sha256": bundle["sha256"], "size": bundle["size"]}
                    committed.append(n.resources)
                else:
                    local_bundle = self.res_dir / n.resources
                for note in notes:
                    self.warnings.append(f"certificate {note.subject} in {note.path}: {note.problem}")
                if bundle["skipped"]:
                    self.warnings.append("left out of the resources bundle (no content to restore): "
                                         + ", ".join(bundle["skipped"]))
            manifest = _manifest(pre, chosen, n, result, status, verification, files, bundle, notes, self.opts,
                                 self.res_dir, hash_kv)
            self.target.write_manifest(n.manifest, dump(manifest))
            return manifest.as_json()
        except BaseException:
            for name in committed:  # no manifest → these files are not a backup; remove them
                self.target.remove(name)
            if local_bundle is not None:
                with contextlib.suppress(FileNotFoundError):
                    local_bundle.unlink()
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


def _verify(opts: BackupOptions, plain: FileSink | None, encoded: EncodedSink | None,
            result: StreamResult) -> tuple[SnapshotStatus | None, dict[str, Any]]:
    v: dict[str, Any] = {"sha256_trailer": True, "structure": False, "roundtrip": None}
    status: SnapshotStatus | None = None
    if plain is not None and opts.verify == "full":
        report = verify_db(plain.part, display=plain.path.name)
        status = report.status
        v["structure"] = True
        v["pages_checked"] = report.pages
    if encoded is not None and plain is not None and opts.compress == "zstd" and not opts.recipients \
            and opts.verify == "full":
        _roundtrip_zstd(encoded.file.part, result.file_sha256)
        v["roundtrip"] = True
    return status, v


def _write_resources(paths: list[Path], res_dir: Path, names: BackupNames, recipients: list[Any],
                     file: Any = None) -> tuple[dict[str, Any], list[CertificateNote]]:
    notes = certificate_notes(paths)
    target = res_dir / names.resources
    out = file if file is not None else FileSink(target)
    sink: Any = EncodedSink(target, False, recipients, file=out) if recipients else out
    try:
        skipped: list[str] = []
        count = write_bundle(paths, sink, skipped)
        sink.finish()
        f = sink.file if recipients else sink
        f.commit()
        fsync_dir(res_dir)
    except BaseException:
        sink.discard()
        raise
    return {"sha256": f.sha.hexdigest(), "size": f.size, "files": count, "skipped": skipped}, notes


def _manifest(pre: Preflight, chosen: Candidate, names: BackupNames, result: StreamResult,
              status: SnapshotStatus | None, verification: dict[str, Any], files: dict[str, dict[str, Any]],
              bundle: dict[str, Any] | None, notes: list[CertificateNote], opts: BackupOptions,
              res_dir: Path, hash_kv: HashKV | None = None) -> Manifest:
    """The manifest of this backup (:mod:`etcdwarden.format.manifest`), validated when written."""
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
            "file": names.resources, "directory": str(res_dir), "paths": [str(p) for p in opts.resources],
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
