"""A small segment recorder for the point-in-time restore tests (not the product's ``receive``).

It watches a source cluster's whole keyspace from a base backup's revision + 1 with a plain gRPC watch,
stamps each revision with the time it arrived, takes the lease records the workload hands it (grants right
after LeaseGrant returned, revocations after LeaseRevoke), and writes segments of ``per_segment`` revisions
with :class:`SegmentEncoder` and their manifests into a local repository directory, hash-chained to the
base snapshot.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2_grpc as rpc
from etcdwarden.format.names import BackupNames
from etcdwarden.format.segment import (
    Event,
    LeaseRecord,
    Record,
    RevisionRecord,
    SegmentEncoder,
    SegmentManifest,
    dump_segment_manifest,
)


class Recorder:
    def __init__(self, endpoint: str, repo: Path, manifest: Path, per_segment: int = 40) -> None:
        doc = json.loads(manifest.read_text())
        self.repo = repo
        self.base = doc["timestamp"]
        self.base_revision = int(doc["status"]["revision"] if doc.get("status") else doc["revision"])
        self.previous = doc["files"][doc["snapshot"]["file"]]["sha256"]
        self.cluster_id = doc["cluster_id"]
        self.per_segment = per_segment
        self.endpoint = endpoint.split("://", 1)[-1]
        self.records: list[Record] = []  # of the open segment
        self.revision_times: dict[int, dt.datetime] = {}
        self.last_revision = self.base_revision
        self.segments: list[SegmentManifest] = []
        self._pending: list[LeaseRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._channel = grpc.insecure_channel(self.endpoint)
        self._ready = threading.Event()

    def lease(self, op: str, lease_id: int, ttl: int = 0) -> None:
        with self._lock:
            self._pending.append(LeaseRecord(op, lease_id, dt.datetime.now(dt.UTC), ttl))  # type: ignore[arg-type]

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10)

    def _requests(self) -> Iterator[pb.WatchRequest]:
        yield pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"\x00", range_end=b"\x00", start_revision=self.base_revision + 1))
        self._stop.wait()

    def _run(self) -> None:
        stream = rpc.WatchStub(self._channel).Watch(self._requests())
        try:
            for resp in stream:
                if resp.created:
                    self._ready.set()
                now = dt.datetime.now(dt.UTC)
                by_rev: dict[int, list[Event]] = {}
                for ev in resp.events:
                    kv = ev.kv
                    e = Event("put", kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) \
                        if ev.type == 0 else Event("delete", kv.key, mod_revision=kv.mod_revision)
                    by_rev.setdefault(kv.mod_revision, []).append(e)
                for rev in sorted(by_rev):
                    with self._lock:
                        self.records.extend(self._pending)
                        self._pending.clear()
                        self.records.append(RevisionRecord(rev, now, tuple(by_rev[rev])))
                        self.revision_times[rev] = now
                        self.last_revision = rev
                        if sum(isinstance(r, RevisionRecord) for r in self.records) >= self.per_segment:
                            self._flush()
        except grpc.RpcError:
            if not self._stop.is_set():
                raise

    def _flush(self) -> None:
        recs, self.records = self.records, []
        revs = [r for r in recs if isinstance(r, RevisionRecord)]
        if not revs:
            self.records = recs
            return
        enc = SegmentEncoder(revs[0].revision)
        data = b"".join(enc.add(r) for r in recs) + enc.finish()
        names = BackupNames(self.base)
        assert enc.first_time is not None and enc.last_time is not None
        m = SegmentManifest(base=self.base, cluster_id=self.cluster_id, file=names.segment(revs[0].revision),
                            first_revision=revs[0].revision, last_revision=enc.last_revision,
                            revisions=enc.revisions, events=enc.events, lease_records=enc.lease_records,
                            first_time=enc.first_time, last_time=enc.last_time, size=len(data), sha256=enc.sha256,
                            previous_sha256=self.previous, created_at=dt.datetime.now(dt.UTC))
        (self.repo / m.file).write_bytes(data)
        (self.repo / m.name).write_bytes(dump_segment_manifest(m))
        self.previous = m.sha256
        self.segments.append(m)

    def stop(self, until: int, timeout: float = 30.0) -> None:
        """Wait until revision ``until`` was seen, write the last segment, stop watching."""
        deadline = time.monotonic() + timeout
        while self.last_revision < until:
            assert time.monotonic() < deadline, f"the recorder saw revision {self.last_revision}, not {until}"
            time.sleep(0.05)
        with self._lock:
            self._flush()
        self._stop.set()
        self._channel.close()
        self._thread.join(timeout=5)


def extend_chain(repo: Path, last: SegmentManifest, revisions: int) -> int:
    """Append a synthetic segment of ``revisions`` puts (new keys) after ``last``; its last revision."""
    enc = SegmentEncoder(last.last_revision + 1)
    t = last.last_time
    chunks = []
    for i in range(revisions):
        rev = enc.first_revision + i
        key = f"/synthetic/{rev}".encode()
        chunks.append(enc.add(RevisionRecord(rev, t + dt.timedelta(milliseconds=i + 1),
                                             (Event("put", key, b"v" * 100, rev, rev, 1),))))
    chunks.append(enc.finish())
    data = b"".join(chunks)
    assert enc.first_time is not None and enc.last_time is not None
    m = SegmentManifest(base=last.base, cluster_id=last.cluster_id, file=BackupNames(last.base).segment(
        enc.first_revision), first_revision=enc.first_revision, last_revision=enc.last_revision,
        revisions=enc.revisions, events=enc.events, first_time=enc.first_time, last_time=enc.last_time,
        size=len(data), sha256=enc.sha256, previous_sha256=last.sha256, created_at=dt.datetime.now(dt.UTC))
    (repo / m.file).write_bytes(data)
    (repo / m.name).write_bytes(dump_segment_manifest(m))
    return enc.last_revision
