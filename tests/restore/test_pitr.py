"""Point-in-time restore (issue 13): a workload on a real cluster, recorded into segments after a full backup,
then ``restore member --to-revision/--to-time`` compared with what the source served at that revision
(``etcdctl get "" --prefix --rev R -w json``: keys, values, create/mod revision, version, lease)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from etcdwarden.binaries import find_binary
from etcdwarden.cli.restore_cmd import CRASH_ENV
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2_grpc as rpc
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.repository.base import open_repository
from etcdwarden.restore.backup import snapshot_facts
from etcdwarden.restore.scratch_member import ScratchMember
from tests.cli_helpers import Result, cli
from tests.repository.conftest import seaweed  # noqa: F401  (the session's object store)
from tests.repository.seaweed import SeaweedS3
from tests.restore.conftest import backup_of
from tests.restore.helpers import statuses, stop_all, write_spec
from tests.restore.recorder import Recorder, extend_chain
from tests.tiers import starts


def etcdctl_json(endpoint: str, *args: str) -> Any:
    res = subprocess.run([str(find_binary("etcdctl")), f"--endpoints={endpoint}", *args, "-w", "json"],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(res.stdout)


def kvs_at(endpoint: str, revision: int) -> list[dict[str, Any]]:
    return list(etcdctl_json(endpoint, "get", "", "--prefix", "--rev", str(revision)).get("kvs", []))


@dataclass
class Source:
    repo: Path
    base_revision: int
    marks: dict[str, int]  # workload step -> revision after it
    expected: dict[int, list[dict[str, Any]]]
    times: dict[int, dt.datetime]
    leases: dict[str, int]
    recorder: Recorder
    initial_cluster: str = "m0=http://127.0.0.1:2380"
    notes: list[str] = field(default_factory=list)


class Workload:
    def __init__(self, endpoint: str, rec: Recorder | None = None) -> None:
        self.channel = grpc.insecure_channel(endpoint.split("://", 1)[-1])
        self.kv = rpc.KVStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)
        self.rec = rec

    def put(self, key: str, value: str, lease: int = 0) -> int:
        return int(self.kv.Put(pb.PutRequest(key=key.encode(), value=value.encode(), lease=lease)).header.revision)

    def txn(self, *ops: pb.RequestOp) -> int:
        return int(self.kv.Txn(pb.TxnRequest(success=list(ops))).header.revision)

    def grant(self, ttl: int) -> int:
        lid = int(self.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl)).ID)
        if self.rec is not None:
            self.rec.lease("grant", lid, ttl)
        return lid

    def revoke(self, lid: int) -> int:
        rev = int(self.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lid)).header.revision)
        if self.rec is not None:
            self.rec.lease("revoke", lid)
        return rev


def _put(key: str, value: str) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key.encode(), value=value.encode()))


def _delete(key: str, end: str = "") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key.encode(), range_end=end.encode()))


@pytest.fixture(scope="module")
@starts("etcd")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    base = tmp_path_factory.mktemp("pitr")
    cluster = LocalCluster(base / "src", size=1)
    cluster.start()
    try:
        url = cluster.endpoints[0]
        w = Workload(url)
        held = w.grant(60)  # a lease in the base snapshot: kept alive by the replay, its TTL kept
        w.put("/registry/leases/held", "h0", held)
        for i in range(5):
            w.put(f"/registry/pods/ns/p{i}", f"v{i}")
        repo = base / "repo"
        saved = backup_of(cluster, repo)
        rec = Recorder(url, repo, saved.manifest, per_segment=12)
        rec.start()
        w.rec = rec
        marks: dict[str, int] = {}
        for i in range(15):
            marks["puts"] = w.put(f"/registry/configmaps/ns/cm{i % 6}", f"c{i}")  # versions climb
        marks["delete"] = w.txn(_delete("/registry/pods/ns/p0"))
        marks["range"] = w.txn(_delete("/registry/pods/ns/p2", "/registry/pods/ns/p4"))  # 2 keys, one revision
        marks["txn"] = w.txn(_put("/registry/secrets/a", "s"), _put("/registry/secrets/b", "s"),
                             _delete("/registry/configmaps/ns/cm0"))
        time.sleep(0.3)
        kept = w.grant(60)
        w.put("/registry/events/e1", "e", kept)
        marks["attach"] = w.put("/registry/events/e2", "e", kept)
        gone = w.grant(60)
        w.put("/registry/masterleases/a", "m", gone)
        marks["before-revoke"] = w.put("/registry/masterleases/b", "m", gone)
        time.sleep(0.3)
        marks["revoke"] = w.revoke(gone)  # deletes both keys in one revision
        short = w.grant(2)
        marks["short"] = w.put("/short/k", "x", short)
        deadline = time.monotonic() + 30
        while w.kv.Range(pb.RangeRequest(key=b"/short/k")).kvs:  # wait for the lease to expire
            assert time.monotonic() < deadline
            time.sleep(0.2)
        rec.lease("revoke", short)
        marks["expired"] = int(w.kv.Range(pb.RangeRequest(key=b"/")).header.revision)
        w.put("/registry/leases/held2", "h1", held)
        for i in range(10):
            marks["end"] = w.put(f"/plain/k{i}", "z" * (i * 50))
        rec.stop(marks["end"])
        revs = sorted({saved.revision, *marks.values(), saved.revision + 1})
        expected = {r: kvs_at(url, r) for r in revs}
        w.channel.close()
    finally:
        cluster.stop()
    return Source(repo, saved.revision, marks, expected, dict(rec.revision_times),
                  {"held": held, "kept": kept, "gone": gone, "short": short}, rec)


def restore(src: Source, data_dir: Path, *extra: str, repo: Path | None = None) -> Result:
    return cli("restore", "member", str(repo or src.repo), "--data-dir", str(data_dir), "--name", "m0",
               "--initial-cluster", src.initial_cluster, *extra)


def restored_state(data_dir: Path, revision: int, work: Path) -> tuple[int, list[dict[str, Any]], Any]:
    served = snapshot_facts(data_dir / "member" / "snap" / "db").served_revision()
    copy = work / "check"
    shutil.copytree(data_dir, copy)
    with ScratchMember(copy, work / "check.log") as m:
        kvs = kvs_at(m.client_url, revision)
        leases = etcdctl_json(m.client_url, "lease", "list")
    return served, kvs, leases


def _ids(leases: Any) -> set[int]:
    return {int(x["id"]) for x in leases.get("leases") or []}


def test_restore_to_revisions_exactly(source: Source, tmp_path: Path) -> None:
    m = source.marks
    for name in ("txn", "before-revoke", "revoke", "expired"):
        r = m[name]
        d = tmp_path / f"d-{name}"
        res = restore(source, d, "--to-revision", str(r))
        assert res.code == 0, res.err
        assert f"to revision {r}" in res.err
        served, kvs, leases = restored_state(d, r, tmp_path / name)
        assert served == r
        assert kvs == source.expected[r], name
        ids = _ids(leases)
        assert source.leases["held"] in ids
        assert (source.leases["kept"] in ids) == (r >= m["attach"]), name
        assert (source.leases["gone"] in ids) == (m["attach"] < r < m["revoke"]), name  # revoked at its revision
        assert source.leases["short"] not in ids or r < m["expired"]


def test_restore_latest_by_default_and_to_time(source: Source, tmp_path: Path) -> None:
    end = source.marks["end"]
    res = restore(source, tmp_path / "latest")
    assert res.code == 0, res.err
    assert f"to revision {end}" in res.err
    served, kvs, leases = restored_state(tmp_path / "latest", end, tmp_path / "l")
    assert served == end and kvs == source.expected[end]
    assert source.leases["gone"] not in _ids(leases) and source.leases["kept"] in _ids(leases)

    r = source.marks["attach"]
    t = source.times[r]
    later = [x for x, seen in source.times.items() if seen <= t]
    assert max(later) == r
    text = t.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat()  # the same instant, with an offset
    res = restore(source, tmp_path / "t", "--to-time", text)
    assert res.code == 0, res.err
    served, kvs, _ = restored_state(tmp_path / "t", r, tmp_path / "tt")
    assert served == r and kvs == source.expected[r]


def test_dry_run_replays_into_staging_and_changes_nothing(source: Source, tmp_path: Path) -> None:
    parent = tmp_path / "host"
    parent.mkdir()
    r = source.marks["txn"]
    res = restore(source, parent / "etcd", "--to-revision", str(r), "--dry-run")
    assert res.code == 0, res.err
    assert f"up to revision {r}" in res.out and "replayed full backup" in res.out
    assert list(parent.iterdir()) == []


def test_no_segments_restores_the_full_backup(source: Source, tmp_path: Path) -> None:
    res = restore(source, tmp_path / "full", "--no-segments")
    assert res.code == 0, res.err
    served, kvs, _ = restored_state(tmp_path / "full", source.base_revision, tmp_path / "f")
    assert served == source.base_revision and kvs == source.expected[source.base_revision]
    res = restore(source, tmp_path / "base", "--to-revision", str(source.base_revision))
    assert res.code == 0 and "itself: nothing to replay" in res.err, res.err
    served, kvs, _ = restored_state(tmp_path / "base", source.base_revision, tmp_path / "b")
    assert served == source.base_revision and kvs == source.expected[source.base_revision]


def _broken_copy(src: Source, tmp_path: Path, how: str) -> tuple[Path, int]:
    """A copy of the repository with its second segment (of three) damaged; the last good revision."""
    repo = tmp_path / f"repo-{how}"
    shutil.copytree(src.repo, repo)
    assert len(src.recorder.segments) >= 3
    seg = src.recorder.segments[1]  # not the last: a chain that merely ends early is not broken
    data = repo / seg.file
    if how == "tampered":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        data.write_bytes(bytes(raw))
    elif how == "missing-data":
        data.unlink()
    else:  # the whole segment gone: a gap in the chain
        data.unlink()
        (repo / seg.name).unlink()
    return repo, seg.first_revision - 1


@pytest.mark.parametrize("how", ["tampered", "missing-data", "gap"])
def test_a_broken_chain_is_refused_past_the_break(source: Source, tmp_path: Path, how: str) -> None:
    repo, good = _broken_copy(source, tmp_path, how)
    d = tmp_path / "d"
    for extra in ((), ("--to-revision", str(source.marks["end"]))):
        res = restore(source, d, *extra, repo=repo)
        assert res.code == 3, res.err
        assert f"the last good point is revision {good}" in res.err and f"--to-revision {good}" in res.err
        assert not d.exists()
    if how == "tampered":  # before the break: restored exactly
        res = restore(source, d, "--to-revision", str(good), repo=repo)
        assert res.code == 0, res.err
        served, kvs, _ = restored_state(d, good, tmp_path / "w")
        assert served == good and kvs == source.expected.get(good, kvs)


@pytest.fixture
def c3(etcd3: LocalCluster) -> Iterator[LocalCluster]:
    yield etcd3
    stop_all(etcd3)


def test_restore_cluster_to_a_revision(c3: LocalCluster, tmp_path: Path) -> None:
    """Three members captured and restored as a cluster (resumable path unchanged) at a revision mid-window."""
    url = c3.endpoints[0]
    w = Workload(url)
    lid = w.grant(60)
    w.put("/registry/leases/a", "0", lid)
    saved = backup_of(c3, tmp_path / "repo")
    rec = Recorder(url, saved.directory, saved.manifest, per_segment=5)
    rec.start()
    w.rec = rec
    for i in range(8):
        w.put(f"/registry/pods/p{i % 3}", f"v{i}")
    target = w.txn(_put("/registry/a", "1"), _put("/registry/b", "2"), _delete("/registry/pods/p0"))
    for i in range(6):
        end = w.put(f"/later/{i}", "x")
    rec.stop(end)
    expected = kvs_at(url, target)
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    r = cli("restore", "cluster", str(saved.directory), "--spec", str(spec), "--to-revision", str(target),
            "-w", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["verify"]["expected_revision"] == target
    assert {int(s.header.revision) for s in statuses(c3)} == {target}
    assert all(kvs_at(ep, target) == expected for ep in c3.endpoints)
    assert "to revision" in r.err


@pytest.fixture
def s3_env(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:  # noqa: F811
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    return seaweed


def test_restore_from_s3_to_a_revision(source: Source, s3_env: SeaweedS3, tmp_path: Path) -> None:
    """The chain in a SeaweedFS bucket: segments fetched into the staging directory beside the data directory
    (sha256 proven), replayed, the staging directory removed; a damaged segment object is refused."""
    url = s3_env.url("pitr")
    repo = open_repository(url, s3_env.options())
    try:
        for f in sorted(source.repo.iterdir()):
            repo.write_bytes(f.name, f.read_bytes())
    finally:
        repo.close()
    parent = tmp_path / "host"
    parent.mkdir()
    r = source.marks["revoke"]
    res = cli("restore", "member", url, "--s3-endpoint", s3_env.endpoint, "--data-dir", str(parent / "etcd"),
              "--name", "m0", "--initial-cluster", source.initial_cluster, "--to-revision", str(r))
    assert res.code == 0, res.err
    assert sorted(p.name for p in parent.iterdir()) == ["etcd"]  # nothing staged is left
    served, kvs, _ = restored_state(parent / "etcd", r, tmp_path / "w")
    assert served == r and kvs == source.expected[r]

    seg = source.recorder.segments[1]
    repo = open_repository(url, s3_env.options())
    try:
        raw = bytearray((source.repo / seg.file).read_bytes())
        raw[-5] ^= 0xFF
        repo.write_bytes(seg.file, bytes(raw))
    finally:
        repo.close()
    res = cli("restore", "member", url, "--s3-endpoint", s3_env.endpoint, "--data-dir", str(parent / "etcd2"),
              "--name", "m0", "--initial-cluster", source.initial_cluster)
    assert res.code == 3 and "sha256" in res.err and f"--to-revision {seg.first_revision - 1}" in res.err, res.err
    assert sorted(p.name for p in parent.iterdir()) == ["etcd"]


@pytest.fixture
def c1(etcd1: LocalCluster) -> Iterator[LocalCluster]:
    yield etcd1
    stop_all(etcd1)


def test_a_resumed_cluster_restore_keeps_its_point(source: Source, c1: LocalCluster, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash after the restore step, the receiver writes one more segment, rerun: the same revision, not the
    new latest point (members restored from two different points would not form one cluster)."""
    repo = tmp_path / "repo"
    shutil.copytree(source.repo, repo)
    last = source.recorder.segments[-1]
    held = tmp_path / "held"
    held.mkdir()
    for name in (last.file, last.name):
        (repo / name).rename(held / name)
    point = last.first_revision - 1
    spec = write_spec(c1, tmp_path / "cluster.yaml")
    monkeypatch.setenv(CRASH_ENV, "restore")
    r = cli("restore", "cluster", str(repo), "--spec", str(spec))
    assert r.code != 0 and f"to revision {point}" in r.err
    monkeypatch.delenv(CRASH_ENV)
    for name in (last.file, last.name):
        (held / name).rename(repo / name)
    r = cli("restore", "cluster", str(repo), "--spec", str(spec), "-w", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["verify"]["expected_revision"] == point
    assert {int(s.header.revision) for s in statuses(c1)} == {point}


def _processes_under(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmd and int(proc.name) != os.getpid():
                found.append(cmd)
    return found


def test_sigterm_during_the_replay_leaves_nothing(source: Source, tmp_path: Path) -> None:
    """SIGTERM while the scratch member replays: it is stopped, the staging directory removed, D never made."""
    repo = tmp_path / "repo"
    shutil.copytree(source.repo, repo)
    end = extend_chain(repo, source.recorder.segments[-1], 20_000)
    host = tmp_path / "host"
    host.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "etcdwarden", "restore", "member", str(repo), "--data-dir",
                             str(host / "etcd"), "--name", "m0", "--initial-cluster", source.initial_cluster,
                             "--to-revision", str(end)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any("--name replay" in p for p in _processes_under(host)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(1.0)  # replaying
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert _processes_under(host) == [], err  # the scratch etcd was stopped
    assert list(host.iterdir()) == [], err


def test_a_drill_replays_the_chain_and_a_broken_one_is_unproven(source: Source, tmp_path: Path) -> None:
    """Issue 14 with 13: a drill restores the backup *and its segments*: every revision replayed, the member
    ends at the chain's last revision; a chain that cannot be replayed fails the drill (exit 1, unproven)."""
    repo = tmp_path / "repo"
    shutil.copytree(source.repo, repo)
    r = cli("backups", "drill", str(repo), "--temp-dir", str(tmp_path), "-w", "json")
    [record_file] = list(repo.glob("drill_*.json"))
    record = json.loads(record_file.read_text())
    # (this workload's values under /registry are not Kubernetes objects: that check fails, on its own)
    assert r.code == 1 and [n for n, c in record["checks"].items() if not c["ok"]] == ["kubernetes"], record
    assert record["checks"]["segments"]["ok"] is True, record["checks"]
    assert f"replayed up to revision {source.marks['end']}" in record["checks"]["segments"]["detail"]
    assert record["figures"]["segments.revision"] == {"recorded": source.marks["end"], "note": None, "measured":
                                                      source.marks["end"], "ok": True}

    broken, good = _broken_copy(source, tmp_path, "tampered")
    r = cli("backups", "drill", str(broken), "--temp-dir", str(tmp_path))
    assert r.code == 1, r.err
    record = json.loads(next(broken.glob("drill_*.json")).read_text())
    assert record["checks"]["segments"]["ok"] is False and record["result"] != "passed"
    assert "segments" in [n for n, c in record["checks"].items() if not c["ok"]]
    assert f"revision {good}" in record["checks"]["segments"]["detail"], record["checks"]["segments"]
    r = cli("backups", "list", str(broken))
    assert "unproven" in r.out, r.out
