"""``backups drill`` on real etcd: a good backup is proven; a backup whose files all match their sha256 but whose
content is not what the manifest recorded, or whose bundle lacks a listed file, is unproven (exit 1), kept."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage
import pytest

from etcdwarden.backup.run import BackupOptions, take_backup
from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.local.sample import fill
from tests.cli_helpers import cli
from tests.conftest import ROOT_PASSWORD
from tests.encryption.k8sdata import json_object, protobuf_object
from tests.tiers import starts

KEY = base64.b64encode(bytes(range(32))).decode()
ENC_CONFIG = f"""apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - aescbc: {{keys: [{{name: key1, secret: "{KEY}"}}]}}
  - identity: {{}}
"""


@dataclass
class Backups:
    first: Path  # a backup of the cluster: k8s-like data, encrypted secrets, a leased key, a resources bundle
    second: Path  # a later backup of the same cluster, holding more keys
    bare: Path  # the same as second, without the EncryptionConfiguration in a bundle
    age: Path  # the same as second, compressed and age-encrypted, its bundle too
    identity: Path  # the age identity that opens it


def _take(cluster: LocalCluster, directory: Path, **kw: object) -> Path:
    async def go() -> Path:
        async with EtcdClient(ClientConfig.from_strings(cluster.endpoints)) as c:
            r = await take_backup(c, BackupOptions(directory=directory, **kw))  # type: ignore[arg-type]
            assert r.manifest_path is not None
            return r.manifest_path

    return asyncio.run(go())


async def _seed(cluster: LocalCluster, cfg: EncryptionConfiguration) -> None:
    t = cfg.transformer_for("secrets")
    async with EtcdClient(ClientConfig.from_strings(cluster.endpoints)) as c:
        await fill(c, 300, value_size=200)
        compact_at = 0
        for i in range(5):
            key = f"/registry/secrets/enc/s{i}".encode()
            value = t.write(protobuf_object("v1", "Secret", "enc", f"s{i}", {"p": b"x"}), key)
            await c.put(key, value + b"stale")  # an older version, gone with the compaction
            compact_at = int((await c.put(key, value)).header.revision)
        lease = await c.lease_grant(600)
        await c.put(b"/registry/leases/kube-node-lease/n1", json_object("coordination.k8s.io/v1", "Lease",
                                                                        "kube-node-lease", "n1", {}), lease=lease)
        await c.put(b"/registry/configmaps/enc/plain", json_object("v1", "ConfigMap", "enc", "plain", {"k": "v"}))
        await c.compact(compact_at)  # a compacted history: HashKV at the backup's revision counts from it


@pytest.fixture(scope="module")
@starts("etcd")
def backups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backups]:
    base = tmp_path_factory.mktemp("drill")
    res = base / "res"
    (res / "pki").mkdir(parents=True)
    (res / "pki" / "ca.crt").write_text("not really a certificate\n")
    (res / "etcd-pod.yaml").write_text("kind: Pod\n")
    enc = res / "encryption-config.yaml"
    enc.write_text(ENC_CONFIG)
    cluster = LocalCluster(base / "src", size=1)
    cluster.start()
    try:
        asyncio.run(_seed(cluster, EncryptionConfiguration.parse(ENC_CONFIG)))
        _take(cluster, base / "first", resources=[res / "pki", res / "etcd-pod.yaml"], encryption_config=enc)
        asyncio.run(_more(cluster))
        _take(cluster, base / "second", encryption_config=enc)
        _take(cluster, base / "bare")
        identity = pyrage.x25519.Identity.generate()
        (base / "age.key").write_text(f"{identity}\n")
        _take(cluster, base / "age", resources=[res / "pki"], encryption_config=enc, compress="zstd",
              recipients=[str(identity.to_public())])
    finally:
        cluster.stop()
    yield Backups(base / "first", base / "second", base / "bare", base / "age", base / "age.key")


async def _more(cluster: LocalCluster) -> None:
    async with EtcdClient(ClientConfig.from_strings(cluster.endpoints)) as c:
        await fill(c, 40, value_size=100, prefix="/registry/later", seed=3)


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _manifest(repo: Path) -> tuple[Path, dict[str, object]]:
    path = next(repo.glob("backup_*.json"))
    return path, json.loads(path.read_text())


def _drill(repo: Path, work: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    work.mkdir(exist_ok=True)
    r = cli("backups", "drill", str(repo), "--temp-dir", str(work), "-w", "json", *extra)
    return r.code, json.loads(r.out), r.err


def _listed(repo: Path) -> dict[str, object]:
    [b] = [b for b in json.loads(cli("backups", "list", str(repo), "-w", "json").out)["backups"]]
    return dict(b)


def test_a_good_backup_is_proven(backups: Backups, tmp_path: Path) -> None:
    repo = _copy(backups.first, tmp_path / "repo")
    _path, m = _manifest(repo)
    hk = m["hash_kv"]
    assert isinstance(hk, dict) and hk["revision"] == m["revision"] and hk["keys"] == 300 + 5 + 2
    code, doc, err = _drill(repo, tmp_path / "work")
    assert code == 0, err
    [d] = doc["drills"]
    assert d["result"] == "passed" and d["ok"], d["problems"]
    figures = d["figures"]
    for name in ("revision", "keys", "hash_kv", "snapshot_total_key", "snapshot_hash"):
        assert figures[name]["ok"] is True, (name, figures[name])
    assert figures["hash_kv"]["measured"] == hk["hash"] and figures["revision"]["measured"] == m["revision"]
    checks = d["checks"]
    assert all(c["ok"] for c in checks.values()), checks
    # every Kubernetes value decoded, the secrets by decrypting them with the bundled key
    assert "5 aescbc/key1" in checks["kubernetes"]["detail"] and "1 EncryptionConfiguration" in \
        checks["resources"]["detail"]
    assert d["etcd_version"] == "3.5.1" and d["durations"]["total"] > 0
    # the record beside the backup; the list says proven; nothing of the drill is left behind
    record = json.loads(next(repo.glob("drill_*.json")).read_text())
    assert record["result"] == "passed" and record["backup"] == m["timestamp"]
    listed = _listed(repo)
    assert listed["proven"] is True and listed["state"] == "complete"
    assert list((tmp_path / "work").iterdir()) == []
    table = cli("backups", "list", str(repo))
    assert "DRILL" in table.out and "passed" in table.out
    # --all-unproven: nothing left to prove
    code, doc, _ = _drill(repo, tmp_path / "work", "--all-unproven")
    assert code == 0 and doc["drills"] == [] and len(doc["skipped"]) == 1


def test_an_older_backup_without_hash_kv_is_drilled_on_revision_and_keys(backups: Backups, tmp_path: Path) -> None:
    repo = _copy(backups.second, tmp_path / "repo")
    path, m = _manifest(repo)
    del m["hash_kv"]
    path.write_text(json.dumps(m))
    code, doc, err = _drill(repo, tmp_path / "work")
    assert code == 0, err
    [d] = doc["drills"]
    assert d["figures"]["revision"]["ok"] is True and d["figures"]["snapshot_total_key"]["ok"] is True
    assert d["figures"]["hash_kv"]["ok"] is None and "HashKV was not recorded" in d["figures"]["hash_kv"]["note"]
    assert any("HashKV was not recorded" in n for n in d["notes"])


def _tamper(repo: Path, case: str, other: Path) -> str:
    """Change what the manifest says the snapshot holds, every file's sha256 still matching; the figure that
    must differ."""
    path, m = _manifest(repo)
    status, hk = m["status"], m["hash_kv"]
    assert isinstance(status, dict) and isinstance(hk, dict)
    if case == "revision":
        m["revision"] = status["revision"] = int(status["revision"]) + 7
        figure = "revision"
    elif case == "keys":
        hk["keys"] = int(hk["keys"]) - 1
        figure = "keys"
    elif case == "total_key":
        status["totalKey"] = int(status["totalKey"]) + 3
        figure = "snapshot_total_key"
    elif case == "hash_kv":
        hk["hash"] = (int(hk["hash"]) + 1) % 2**32
        figure = "hash_kv"
    else:  # another snapshot of the same cluster under this backup's name, its hashes recorded
        snap = repo / str(m["snapshot"]["file"])  # type: ignore[index]
        shutil.copyfile(next(other.glob("snapshot_*.db")), snap)
        data = snap.read_bytes()
        files = m["files"]
        assert isinstance(files, dict)
        files[snap.name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        m["db_sha256"] = hashlib.sha256(data[:-32]).hexdigest()
        m["db_size"] = len(data) - 32
        figure = "revision"
    path.write_text(json.dumps(m, indent=2))
    return figure


@pytest.mark.parametrize("case", ["revision", "keys", "total_key", "hash_kv", "swapped"])
def test_content_other_than_recorded_is_unproven(backups: Backups, tmp_path: Path, case: str) -> None:
    repo = _copy(backups.first, tmp_path / "repo")
    figure = _tamper(repo, case, backups.second)
    verify = cli("snapshot", "verify", str(repo))
    assert verify.code == 0, verify.err  # every file matches its sha256: only a restore tells
    before = sorted(p.name for p in repo.iterdir())
    code, doc, err = _drill(repo, tmp_path / "work")
    assert code == 1
    [d] = doc["drills"]
    assert d["result"] == "failed" and d["figures"][figure]["ok"] is False, d["figures"]
    assert d["checks"]["figures"]["ok"] is False and "unproven" in err
    # marked, never deleted
    after = sorted(p.name for p in repo.iterdir())
    assert [n for n in after if not n.startswith("drill_")] == before
    listed = _listed(repo)
    assert listed["proven"] is False and listed["state"] == "complete"
    table = cli("backups", "list", str(repo))
    assert "unproven" in table.out and "unproven" in table.err


def _rebuild_bundle(bundle: Path, drop: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(bundle, "r:gz") as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for member in src.getmembers():
            if member.name.endswith(drop):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    bundle.write_bytes(gzip.compress(buf.getvalue()))


def test_a_bundle_lacking_a_listed_file_is_unproven(backups: Backups, tmp_path: Path) -> None:
    repo = _copy(backups.first, tmp_path / "repo")
    path, m = _manifest(repo)
    resources = m["resources"]
    assert isinstance(resources, dict)
    bundle = repo / str(resources["file"])
    _rebuild_bundle(bundle, "etcd-pod.yaml")
    data = bundle.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    m["files"][bundle.name] = {"sha256": digest, "size": len(data)}  # type: ignore[index]
    resources["sha256"], resources["size"] = digest, len(data)
    path.write_text(json.dumps(m, indent=2))
    code, doc, err = _drill(repo, tmp_path / "work")
    assert code == 1, err
    [d] = doc["drills"]
    check = d["checks"]["resources"]
    assert check["ok"] is False and "etcd-pod.yaml" in check["detail"] and "lacks" in check["detail"]
    assert d["checks"]["figures"]["ok"] is True  # the snapshot itself is fine
    assert _listed(repo)["proven"] is False


def test_encrypted_values_whose_key_the_backup_lacks_are_unproven(backups: Backups, tmp_path: Path) -> None:
    """The bare backup restores and matches its manifest, but its secrets are encrypted with a key it does not
    carry: restored, they would be unreadable."""
    repo = _copy(backups.bare, tmp_path / "repo")
    code, doc, _err = _drill(repo, tmp_path / "work")
    assert code == 1
    [d] = doc["drills"]
    assert d["checks"]["figures"]["ok"] is True
    check = d["checks"]["kubernetes"]
    assert check["ok"] is False and "5 do not decode" in check["detail"] and "aescbc/key1" in check["detail"]


def test_an_encrypted_backup_needs_its_identity(backups: Backups, tmp_path: Path) -> None:
    repo = _copy(backups.age, tmp_path / "repo")
    r = cli("backups", "drill", str(repo), "--temp-dir", str(tmp_path))
    assert r.code == 2 and "--identity" in r.err  # the drill's setting, not the backup: nothing recorded
    assert not list(repo.glob("drill_*"))
    code, doc, err = _drill(repo, tmp_path / "work", "--identity", str(backups.identity))
    assert code == 0, err
    [d] = doc["drills"]
    assert d["checks"]["resources"]["ok"] and "1 EncryptionConfiguration" in d["checks"]["resources"]["detail"]
    assert d["figures"]["hash_kv"]["ok"] is True and "5 aescbc/key1" in d["checks"]["kubernetes"]["detail"]
    assert list((tmp_path / "work").iterdir()) == []  # the decoded copies went with the private directory


def test_a_backup_with_auth_enabled_is_drilled_without_a_password(etcd_auth: LocalCluster, tmp_path: Path) -> None:
    """The scratch member serves over TLS to the drill's own client certificate (common name root)."""
    async def go() -> None:
        cfg = ClientConfig.from_strings(etcd_auth.endpoints, user="root", password=ROOT_PASSWORD)
        async with EtcdClient(cfg) as c:
            await fill(c, 50, value_size=64)
            await take_backup(c, BackupOptions(directory=tmp_path / "repo"))

    asyncio.run(go())
    assert json.loads(next((tmp_path / "repo").glob("backup_*.json")).read_text())["hash_kv"]["keys"] == 50
    code, doc, err = _drill(tmp_path / "repo", tmp_path / "work")
    assert code == 0, err
    assert doc["drills"][0]["figures"]["keys"]["measured"] == 50
    assert list((tmp_path / "work").iterdir()) == []  # the certificates went with the private directory


def test_segments_go_through_the_replay_hook(backups: Backups, tmp_path: Path) -> None:
    """Segments after a backup are replayed through the hook (by default the point-in-time restore's engine;
    None: not replayed): it is called once, with the running member, and its verdict is the drill's
    ``segments`` check."""
    from etcdwarden.format.drill import Figure
    from etcdwarden.format.names import BackupNames
    from etcdwarden.restore.drill import DrillOptions, ReplayContext, ReplayResult, run_drills

    repo = _copy(backups.second, tmp_path / "repo")
    _path, m = _manifest(repo)
    names = BackupNames(str(m["timestamp"]))
    first = int(m["revision"]) + 1  # type: ignore[call-overload]
    (repo / names.segment(first)).write_bytes(b"segment bytes")
    (repo / names.segment_manifest(first)).write_text("{}")
    work = tmp_path / "work"
    report = run_drills(repo, DrillOptions(work_dir=work, replay=None))
    [o] = report.outcomes
    assert o.ok and "were not replayed" in o.record.checks["segments"].detail
    # by default the drill replays the chain: this segment's manifest is not one, so the drill fails on it
    report = run_drills(repo, DrillOptions(work_dir=work))
    [o] = report.outcomes
    assert not o.ok and o.record.checks["segments"].ok is False, o.record.checks
    seen: list[ReplayContext] = []

    def replay(ctx: ReplayContext) -> ReplayResult:
        seen.append(ctx)
        assert ctx.base_revision == m["revision"] and ctx.client.endpoints[0].raw.startswith("https://127.0.0.1:")
        assert ctx.tls is not None and ctx.client.cert == ctx.tls.client_cert
        return ReplayResult(last_revision=first + 9, figures={"revision": Figure(recorded=first + 9, measured=first,
                                                                                  ok=False)},
                            problems=[f"stopped at revision {first}"])

    report = run_drills(repo, DrillOptions(work_dir=work, replay=replay))
    [o] = report.outcomes
    assert [c.segments for c in seen] == [[names.segment_manifest(first)]]
    assert not o.ok and o.record.checks["segments"].ok is False
    assert o.record.figures["segments.revision"].ok is False
