"""One restore drill of one backup: restore it into a throwaway member on loopback and prove what it serves.

Steps (durations recorded for each), all inside one private directory (mode 0700,
:func:`etcdwarden.snapshot.scratch.scratch_dir`), removed when the drill ends however it ends:

1. ``fetch`` + ``files``: the backup's files, from the repository (streamed, size and sha256 checked on the
   way down) or in place (a local directory: hashed against the manifest);
2. ``resources``: the bundle opens and holds what the manifest lists (:mod:`.bundle`);
3. ``decode`` + ``restore``: a decoded copy of the snapshot (zstd, age) has its sha256 trailer, structure
   and ``snapshot status`` figures checked, then ``etcdutl snapshot restore`` writes a data directory;
4. ``start``: a :class:`~etcdwarden.restore.scratch_member.ScratchMember` on free 127.0.0.1 ports,
   alone (``--force-new-cluster``); nothing of a real cluster is touched;
5. ``measure``: revision, HashKV and key count (:mod:`.live`), compared with the manifest (:mod:`.figures`);
6. ``keys``: every Kubernetes value decodes (:mod:`.keys`);
7. ``segments``: the backup's chain replayed on the same member (:mod:`.replay_segments`), when segments
   follow the backup.

A problem with the backup itself (a file that does not match, a snapshot that does not restore or
start, a figure that differs, a value that does not decode, a bundle that lacks a file) fails the drill:
the record says which. Problems of the drill's own setting (no age identity for an encrypted backup, an etcd
older than the backup's, the repository unreachable) raise instead: no record is written, the backup is not
marked. etcdutl and etcd run with ``nice``. The scratch etcd serves over TLS to the drill's own client
certificate (:mod:`etcdwarden.restore.scratch_tls`): no other local user reads the copy, and a backup with
authentication enabled needs no password.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from etcdwarden import __version__
from etcdwarden.binaries import binary_version, find_binary
from etcdwarden.errors import EtcdwardenError, UsageError
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.format.drill import FAILED, PASSED, Check, DrillRecord, Figure
from etcdwarden.format.manifest import Manifest, Tool
from etcdwarden.repository.base import Repository
from etcdwarden.repository.catalog import CatalogEntry
from etcdwarden.repository.fetch import CorruptObject
from etcdwarden.restore import etcdutl as eu
from etcdwarden.restore.drill.bundle import check_bundle
from etcdwarden.restore.drill.figures import compare, failures
from etcdwarden.restore.drill.keys import Decoder
from etcdwarden.restore.drill.live import DrillAborted, Live, client_config, measure, scan_kubernetes
from etcdwarden.restore.drill.replay_segments import replay_segments
from etcdwarden.restore.drill.segments import ReplayContext, SegmentReplay, segment_manifests
from etcdwarden.restore.replay import REPLAY_ETCD_ARGS
from etcdwarden.restore.scratch_member import ScratchMember
from etcdwarden.restore.scratch_tls import ScratchTLS, create_scratch_tls
from etcdwarden.restore.source import Backup, open_entry
from etcdwarden.snapshot.errors import SnapshotCorrupt, SnapshotInputError
from etcdwarden.snapshot.scratch import existing_dir, scratch_dir
from etcdwarden.snapshot.source import open_snapshot
from etcdwarden.snapshot.status import SnapshotStatus
from etcdwarden.snapshot.verify import file_sha256, verify_db

MEMBER = "drill"
_PEER = "http://127.0.0.1:2380"  # recorded in the restored membership only; the member listens on a free port


@dataclass
class DrillOptions:
    """How to drill (the selection of backups is :func:`etcdwarden.restore.drill.run_drills`')."""

    identity: Path | None = None  # age identity for encrypted backups
    work_dir: Path | None = None  # where the private directory goes (None: see run_drill)
    etcd: Path | None = None
    etcdutl: Path | None = None
    nice: int = 0  # niceness of etcdutl and etcd (the daemon runs the whole drill niced)
    start_timeout: float = 120.0
    # continuous backup: replays the segments after the base backup (None: the drill proves the base only)
    replay: SegmentReplay | None = replay_segments
    abort: threading.Event | None = None  # set: the drill stops at its next step, writes nothing
    progress: Callable[[str], None] | None = None


class _Steps:
    """The checks, durations and problems of one drill as it goes."""

    def __init__(self, options: DrillOptions) -> None:
        self.checks: dict[str, Check] = {}
        self.figures: dict[str, Figure] = {}
        self.status: SnapshotStatus | None = None  # the restored file's snapshot status figures
        self.durations: dict[str, float] = {}
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.options = options

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        abort = self.options.abort
        if abort is not None and abort.is_set():
            raise DrillAborted(f"the drill was stopped before its {name} step")
        if self.options.progress is not None:
            self.options.progress(name)
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.durations[name] = round(self.durations.get(name, 0.0) + time.monotonic() - t0, 3)

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks[name] = Check(ok=ok, detail=detail)
        if not ok:
            self.problems.append(f"{name}: {detail}")
        return ok


def work_base(entry: CatalogEntry, options: DrillOptions) -> Path:
    """Where the drill's private directory goes: ``work_dir`` (created if missing); without one, the system
    temp dir for a plain backup, and a refusal for an encoded one (its decoded copy never goes there)."""
    if options.work_dir is not None:
        try:
            options.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the drill's work directory {options.work_dir}: {e.strerror}") from None
        return existing_dir(options.work_dir)
    m = entry.manifest
    assert m is not None
    bundle = m.resources_file or ""
    if m.snapshot.compression or m.snapshot.encryption or bundle.endswith(".age"):
        raise UsageError(f"backup {entry.id} is compressed or encrypted: its decoded copy is never put in the "
                         "system temp dir; give a work directory (--temp-dir, daemon: workDir) on a disk with room "
                         "for twice the database")
    return Path(tempfile.gettempdir())


def _minor(version: str | None) -> tuple[int, int] | None:
    parts = (version or "").split(".")
    return (int(parts[0]), int(parts[1])) if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit() else None


def _preflight(entry: CatalogEntry, options: DrillOptions) -> tuple[Path, str, eu.Etcdutl]:
    m = entry.manifest
    assert m is not None
    if m.snapshot.encryption == "age" and options.identity is None:
        raise UsageError(f"backup {entry.id} is encrypted (age): give the identity file (--identity, daemon: "
                         "identityFile)")
    etcd = find_binary("etcd", options.etcd)
    etcd_version = binary_version(etcd)
    tool = eu.find_etcdutl(options.etcdutl)
    need, have = _minor(m.server_version), _minor(etcd_version)
    if need is not None and have is not None and need > have:
        raise UsageError(f"backup {entry.id} was taken from etcd {m.server_version}; this drill would run etcd "
                         f"{etcd_version}, which cannot read it: give a newer one (--etcd, --etcdutl)")
    return etcd, etcd_version, tool


def drill_backup(repo: Repository, entry: CatalogEntry, options: DrillOptions) -> DrillRecord:
    """Drill one complete backup (see the module docstring); its record, not yet written anywhere."""
    m = entry.manifest
    assert m is not None
    etcd, etcd_version, tool = _preflight(entry, options)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    steps = _Steps(options)
    revision: int | None = None
    notes: list[str] = []
    with scratch_dir(work_base(entry, options), notes) as work:
        revision = _in_private_dir(repo, entry, m, options, steps, work, etcd, tool)
    steps.durations["total"] = round(time.monotonic() - t0, 3)
    return DrillRecord(
        backup=entry.id, result=FAILED if steps.problems else PASSED, started_at=started,
        finished_at=dt.datetime.now(dt.UTC), tool=Tool(name="etcdwarden", version=__version__),
        host=socket.gethostname(), etcd_version=etcd_version, etcdutl_version=tool.version, revision=revision,
        figures=steps.figures, checks=steps.checks,
        durations=steps.durations, problems=steps.problems, notes=[*notes, *steps.notes])


def _in_private_dir(repo: Repository, entry: CatalogEntry, m: Manifest, options: DrillOptions, steps: _Steps,
                    work: Path, etcd: Path, tool: eu.Etcdutl) -> int | None:
    with steps.step("fetch"):
        try:
            backup = open_entry(repo, entry, [], options.identity, work, resources=True)
        except (CorruptObject, SnapshotCorrupt) as e:
            steps.check("files", False, str(e))
            return None
    with backup:
        steps.notes.extend(backup.notes)
        with steps.step("files"):
            if not steps.check("files", *_files_match(backup, m)):
                return None
        with steps.step("resources"):
            bundle = check_bundle(m, backup.resources, options.identity, work)
            steps.check("resources", bundle.ok, bundle.detail)
        data = work / "data"
        if not _restore(backup, m, options, steps, work, tool, data):
            return None
    # a chain to replay: etcd as the point-in-time restore runs it (room for any source revision, no fsync)
    extra = REPLAY_ETCD_ARGS if options.replay is not None and segment_manifests(entry) else ()
    # TLS to our client certificate alone: no other local reader of the copy, and a backup with authentication
    # enabled needs no password (the certificate's common name is root; see etcdwarden.restore.scratch_tls)
    tls = create_scratch_tls(work)
    member = ScratchMember(data, work / "etcd.log", name=MEMBER, etcd=etcd, nice=options.nice, extra_args=extra,
                           tls=tls)
    with steps.step("start"):
        try:
            member.start(options.start_timeout)
        except EtcdwardenError as e:
            steps.check("start", False, f"the restored data directory does not start: {e}")
            return None
    try:
        steps.check("start", True, f"etcd served on {member.client_url} (pid {member.pid})")
        return asyncio.run(_prove(repo, entry, m, options, steps, member.client_url, Decoder(bundle.configs),
                                  work, tls))
    finally:
        member.stop()


def _files_match(b: Backup, m: Manifest) -> tuple[bool, str]:
    """Every file the manifest lists, at its size and sha256 (those fetched were checked on the way down)."""
    assert b.directory is not None
    for name, f in sorted(m.files.items()):
        p = b.directory / name
        if name in b.proven:
            continue
        if not p.is_file():
            return False, f"{name} is listed in the manifest but missing"
        size = p.stat().st_size
        if size != f.size:
            return False, f"{name} is {size} bytes, the manifest records {f.size}"
        digest = file_sha256(p)
        if digest != f.sha256:
            return False, f"{name} has sha256 {digest}, the manifest records {f.sha256}"
    return True, f"{len(m.files)} file(s) match the manifest's sizes and sha256"


def _restore(b: Backup, m: Manifest, options: DrillOptions, steps: _Steps, work: Path, tool: eu.Etcdutl,
             data: Path) -> bool:
    """Decode, check the snapshot's structure and status figures, restore it into ``data``. The decoded copy is
    removed as soon as the restore is done (the data directory holds the same bytes)."""
    with contextlib.ExitStack() as decoded:
        with steps.step("decode"):
            try:
                plain = decoded.enter_context(open_snapshot(b.snapshot, options.identity, work_dir=work,
                                                            notes=steps.notes))
                report = verify_db(plain, display=m.snapshot_file)
            except SnapshotInputError:
                raise  # the identity does not open it: the drill's setting, not the backup
            except (SnapshotCorrupt, EtcdwardenError) as e:
                steps.check("snapshot", False, str(e))
                return False
            steps.check("snapshot", True, f"sha256 trailer and structure ({report.pages} pages) checked")
            steps.status = report.status
        with steps.step("restore"):
            args = eu.RestoreArgs(MEMBER, f"{MEMBER}={_PEER}", _PEER, "etcdwarden-drill")
            ok, detail = _run_niced(args.command(str(tool.path), str(plain), str(data)), options.nice, options.abort)
            return steps.check("restore", ok, detail)
    return False  # not reached: every path above returns


def _run_niced(cmd: list[str], nice: int, abort: threading.Event | None, timeout: float = 3600.0) -> tuple[bool, str]:
    """Run etcdutl at niceness ``nice``; killed when ``abort`` is set (:class:`DrillAborted`) or after ``timeout``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
    deadline = time.monotonic() + timeout
    while True:
        try:
            out, err = proc.communicate(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            stop = abort is not None and abort.is_set()
            if stop or time.monotonic() > deadline:
                proc.kill()
                proc.communicate()
                if stop:
                    raise DrillAborted("the drill was stopped during etcdutl snapshot restore") from None
                return False, f"etcdutl snapshot restore did not finish within {timeout:.0f}s"
    if proc.returncode != 0:
        tail = " ".join((err or out).strip().splitlines()[-3:])
        return False, f"etcdutl snapshot restore failed (exit {proc.returncode}): {tail}"
    return True, "etcdutl snapshot restore wrote a data directory"


async def _prove(repo: Repository, entry: CatalogEntry, m: Manifest, options: DrillOptions, steps: _Steps,
                 url: str, decoder: Decoder, work: Path, tls: ScratchTLS) -> int:
    cfg = client_config(url, tls)
    async with EtcdClient(cfg) as client:
        live = await _measure_and_scan(client, url, m, options, steps, decoder)
    _segments(repo, entry, options, steps, cfg, tls, live, work)
    return live.revision


async def _measure_and_scan(client: EtcdClient, url: str, m: Manifest, options: DrillOptions, steps: _Steps,
                            decoder: Decoder) -> Live:
    with steps.step("measure"):
        live = await measure(client, url, m.hash_kv)
        figures = compare(m, live, steps.status)
        steps.figures = figures
        bad = failures(figures)
        compared = [n for n, f in figures.items() if f.ok is not None]
        steps.check("figures", not bad, "; ".join(bad) if bad else f"equal to the manifest: {', '.join(compared)}")
        if m.hash_kv is None:
            steps.notes.append(figures["hash_kv"].note or "")
    with steps.step("keys"):
        await scan_kubernetes(client, url, live.revision, decoder, live.decoding, options.abort)
        steps.check("kubernetes", live.decoding.ok, live.decoding.summary())
    return live


def _segments(repo: Repository, entry: CatalogEntry, options: DrillOptions, steps: _Steps, cfg: ClientConfig,
              tls: ScratchTLS, live: Live, work: Path) -> None:
    names = segment_manifests(entry)
    if not names:
        return
    if options.replay is None:
        steps.check("segments", True, f"{len(names)} segment(s) follow this backup; they were not replayed (this "
                                      "drill proves the base backup)")
        return
    with steps.step("segments"):
        result = options.replay(ReplayContext(repo, entry, names, cfg, live.revision, work, options.abort, tls))
    steps.figures.update({f"segments.{k}": v for k, v in result.figures.items()})
    steps.notes.extend(result.notes)
    steps.check("segments", not result.problems, "; ".join(result.problems) or
                f"{len(names)} segment(s) replayed up to revision {result.last_revision}")
