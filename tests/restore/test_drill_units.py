"""The parts of a restore drill that need no etcd: value decoding, figures, the bundle check, the record, the
catalog's reading of records and the choice of backups to drill."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import tarfile
from pathlib import Path

import pytest

from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.format import drill as drill_format
from etcdwarden.format.drill import Check, DrillRecord, DrillRecordError
from etcdwarden.format.manifest import HashKV, Manifest, Tool
from etcdwarden.format.names import BackupNames
from etcdwarden.repository.catalog import load_catalog
from etcdwarden.repository.local import LocalRepository
from etcdwarden.restore.drill import NotDrillable, select
from etcdwarden.restore.drill.bundle import check_bundle
from etcdwarden.restore.drill.figures import compare, failures
from etcdwarden.restore.drill.keys import Decoder, KeyDecoding, decode_all
from etcdwarden.restore.drill.live import Live
from etcdwarden.snapshot.status import SnapshotStatus
from tests.encryption.k8sdata import json_object, protobuf_object
from tests.repository.fake import put_backup

pytestmark = pytest.mark.unit

K = base64.b64encode(bytes(range(32))).decode()
CONFIG = f"""apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - aesgcm: {{keys: [{{name: gcm1, secret: "{K}"}}]}}
  - aescbc: {{keys: [{{name: key1, secret: "{K}"}}]}}
  - kms: {{name: vault, endpoint: "unix:///kms.sock", apiVersion: v2}}
  - identity: {{}}
"""
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_decoding_every_kind_of_kubernetes_value() -> None:
    cfg = EncryptionConfiguration.parse(CONFIG)
    t = cfg.transformer_for("secrets")
    other = EncryptionConfiguration.parse(CONFIG.replace(K, base64.b64encode(b"\x01" * 32).decode()))
    obj = protobuf_object("v1", "Secret", "ns", "s", {"p": b"x"})
    key = b"/registry/secrets/ns/s"
    items = [
        (b"/registry/configmaps/ns/c", json_object("v1", "ConfigMap", "ns", "c", {})),
        (b"/kubernetes.io/pods/ns/p", obj),
        (b"/openshift.io/routes/ns/r", b"\xd9\xd9\xf7\xa1"),  # CBOR
        (key, t.write(obj, key)),  # aesgcm/gcm1, decrypts
        (b"/registry/secrets/ns/cbc", cfg.resources[0].providers[1].build().to_storage(obj,
                                                                                       b"/registry/secrets/ns/cbc")),
        (b"/registry/secrets/ns/kms", b"k8s:enc:kms:v2:vault:\x0a\x01x"),  # KMS named in the config
        (b"compact_rev_key", b"not an object: outside the Kubernetes prefixes"),
        # failures
        (b"/registry/secrets/ns/moved", t.write(obj, b"/registry/secrets/ns/other")),  # authenticated data differs
        (b"/registry/secrets/ns/wrong", other.transformer_for("secrets").write(obj, b"/registry/secrets/ns/wrong")),
        (b"/registry/secrets/ns/unknown-key", b"k8s:enc:aescbc:v1:key9:" + b"\x00" * 32),
        (b"/registry/secrets/ns/kms2", b"k8s:enc:kms:v1:other:\x00\x01x"),
        (b"/registry/secrets/ns/format", b"k8s:enc:rot13:v1:k:abc"),
        (b"/registry/pods/ns/garbage", b"\x00\x01 not an object"),
        (b"/registry/pods/ns/array", b"[1, 2]"),
    ]
    out = decode_all(items, Decoder([cfg]))
    assert out.keys == len(items) - 1
    assert out.kinds["json"] == 1 and out.kinds["protobuf"] == 1 and out.kinds["cbor"] == 1
    assert out.kinds["aesgcm/gcm1"] == 1 and out.kinds["aescbc/key1"] == 1
    assert sum(n for k, n in out.kinds.items() if k.startswith("kms-v2/vault")) == 1
    assert out.failed == 7 and not out.ok
    text = "\n".join(out.examples)
    for bad in ("moved", "wrong", "unknown-key", "kms2", "format", "garbage", "array"):
        assert f"/registry/{'pods' if bad in ('garbage', 'array') else 'secrets'}/ns/{bad}:" in text
    assert "unknown k8s:enc: format" in text and "holds no such key" in text
    # no EncryptionConfiguration bundled: an encrypted value would be unreadable after a restore
    none = decode_all([(key, t.write(obj, key))], Decoder())
    assert none.failed == 1 and "missing from the backup" in none.examples[0]
    assert KeyDecoding().summary().startswith("no Kubernetes keys")


def _manifest(**kw: object) -> Manifest:
    doc: dict[str, object] = {
        "format": 2, "timestamp": "2026-03-01_100000", "tool": {"name": "etcdwarden", "version": "0"},
        "created_at": "2026-03-01T10:00:00+00:00", "cluster_id": "cafe", "member": {"id": "1", "name": "m1"},
        "etcd": {"server_version": "3.5.1"}, "revision": 100, "verified": True, "verification": {},
        "status": {"hash": 7, "revision": 100, "totalKey": 120, "totalSize": 4096},
        "hash_kv": {"hash": 42, "revision": 100, "compact_revision": 50, "keys": 90},
        "snapshot": {"file": "snapshot_2026-03-01_100000.db"},
        "files": {"snapshot_2026-03-01_100000.db": {"sha256": "0" * 64, "size": 1}}}
    doc.update(kw)
    return Manifest.model_validate(doc)


def test_figures_compare_what_was_recorded_with_what_was_measured() -> None:
    live = Live(revision=100, at=100, keys=90, hash=42, compact_revision=50)
    status = SnapshotStatus(hash=7, revision=100, total_key=120, total_size=4096)
    figs = compare(_manifest(), live, status)
    assert all(f.ok for f in figs.values()) and failures(figs) == []
    # each difference is named
    figs = compare(_manifest(), Live(101, 100, 89, 43, 50), SnapshotStatus(8, 100, 121, 4096))
    assert {n for n, f in figs.items() if f.ok is False} == {"revision", "keys", "hash_kv", "snapshot_total_key",
                                                              "snapshot_hash"}
    assert "revision is 101, the manifest recorded 100" in failures(figs)[0]
    # compacted at another revision since: not comparable, not a failure
    figs = compare(_manifest(), Live(100, 100, 90, 999, 60), status)
    assert figs["hash_kv"].ok is None and "not comparable" in (figs["hash_kv"].note or "")
    # an older backup: no HashKV, no live key count recorded
    figs = compare(_manifest(hash_kv=None), Live(100, 100, 90, 42, 50), status)
    assert figs["hash_kv"].ok is None and figs["keys"].ok is None and figs["revision"].ok
    # --verify hash: the recorded revision is a lower bound
    figs = compare(_manifest(status=None), Live(104, 100, 90, 42, 50), None)
    assert figs["revision"].ok is True and "snapshot_hash" not in figs
    # the snapshot's last revisions were deletions a compaction removed: etcd serves the compaction revision
    figs = compare(_manifest(hash_kv=None), Live(103, 103, 90, 1, 103), status)
    assert figs["revision"].ok is True
    # the measurement failed
    live = Live(100, 100, problems={"hash_kv": "HashKV at revision 100 failed: compacted"})
    assert compare(_manifest(), live, status)["hash_kv"].ok is False


def _tar(entries: dict[str, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_the_bundle_check(tmp_path: Path) -> None:
    entries: dict[str, bytes | None] = {"etc/kubernetes/pki": None, "etc/kubernetes/pki/ca.crt": b"x",
                                        "etc/kubernetes/enc.yaml": CONFIG.encode()}
    bundle = tmp_path / "static_kuberesources_2026-03-01_100000.tar.gz"
    bundle.write_bytes(_tar(entries))
    res = {"file": bundle.name, "paths": ["/etc/kubernetes/pki", "/etc/kubernetes/enc.yaml"], "files": 3}
    m = _manifest(resources=res, encryption_at_rest={"key_names": ["gcm1", "key1"]})
    ok = check_bundle(m, bundle, None, tmp_path)
    assert ok.ok and len(ok.configs) == 1 and "3 entries" in ok.detail
    # a listed path missing, a count that differs, a key the configuration lacks
    paths = ["/etc/kubernetes/pki", "/etc/kubernetes/enc.yaml", "/etc/kubernetes/etcd.yaml"]
    bad = check_bundle(_manifest(resources={**res, "paths": paths, "files": 4},
                                 encryption_at_rest={"key_names": ["key2"]}), bundle, None, tmp_path)
    assert not bad.ok
    assert "lacks /etc/kubernetes/etcd.yaml" in bad.detail and "3 entries, the manifest records 4" in bad.detail
    assert "lacks the key(s) key2" in bad.detail
    # a relative path given at backup time was stored under the absolute path it resolved to
    assert check_bundle(_manifest(resources={**res, "paths": ["pki"]}), bundle, None, tmp_path).ok
    # not found, truncated
    assert "not found" in check_bundle(m, None, None, tmp_path).detail
    bundle.write_bytes(bundle.read_bytes()[:-40])
    broken = check_bundle(m, bundle, None, tmp_path)
    assert not broken.ok and "does not open" in broken.detail
    # no bundle at all: fine, unless the manifest records encryption keys it should hold
    assert check_bundle(_manifest(), None, None, tmp_path).ok
    assert not check_bundle(_manifest(encryption_at_rest={"key_names": ["k"]}), None, None, tmp_path).ok


def _record(backup_id: str, result: str = "passed", finished: dt.datetime = NOW) -> DrillRecord:
    return DrillRecord(backup=backup_id, result=result, started_at=finished - dt.timedelta(minutes=1),  # type: ignore[arg-type]
                       finished_at=finished, tool=Tool(name="etcdwarden", version="0"),
                       checks={"start": Check(ok=result == "passed")},
                       problems=[] if result == "passed" else ["start: does not start"])


def test_the_record_round_trips_and_refuses_what_it_does_not_know() -> None:
    r = _record("2026-03-01_100000")
    back = drill_format.load(drill_format.dump(r), "2026-03-01_100000")
    assert back == r and back.passed
    doc = json.loads(drill_format.dump(r))
    for bad, why in (({**doc, "format": 2}, "newer etcdwarden"), ({**doc, "result": "maybe"}, "result"),
                     ({**doc, "backup": "yesterday"}, "backup")):
        with pytest.raises(DrillRecordError, match=why):
            drill_format.load(json.dumps(bad))
    with pytest.raises(DrillRecordError, match="not of its name's"):
        drill_format.load(drill_format.dump(r), "2026-03-01_110000")
    with pytest.raises(DrillRecordError, match="not valid JSON"):
        drill_format.load(b"{")


IDS = ["2026-03-01_080000", "2026-03-01_090000", "2026-03-01_100000", "2026-03-01_110000"]


def test_the_catalog_reads_drills_and_the_selection(tmp_path: Path) -> None:
    repo = LocalRepository(tmp_path / "repo")
    for i in IDS:
        put_backup(repo, i)
    put_backup(repo, "2026-03-01_120000", manifest=False)  # newest, failed: never drilled
    repo.write_bytes(BackupNames(IDS[0]).drill, drill_format.dump(_record(IDS[0], finished=NOW)))
    repo.write_bytes(BackupNames(IDS[1]).drill, drill_format.dump(_record(IDS[1], finished=NOW - dt.timedelta(days=9))))
    repo.write_bytes(BackupNames(IDS[2]).drill, drill_format.dump(_record(IDS[2], "failed")))
    repo.write_bytes(BackupNames(IDS[3]).drill, b"{not json")
    cat = load_catalog(repo)
    e = {x.id: x for x in cat.entries}
    assert e[IDS[0]].proven and not e[IDS[0]].unproven and e[IDS[0]].state == "complete"
    assert e[IDS[2]].unproven and e[IDS[2]].state == "complete"  # a failed drill is no state of its own
    assert e[IDS[3]].unproven and "not valid JSON" in (e[IDS[3]].drill_problem or "")
    assert e[IDS[0]].as_json(repo)["proven"] is True and e[IDS[2]].as_json(repo)["proven"] is False
    assert e["2026-03-01_120000"].as_json(repo)["proven"] is None
    # the newest complete backup, by default; --id; --all-unproven with --max-age
    assert [x.id for x in select(cat)[0]] == [IDS[3]]
    assert [x.id for x in select(cat, IDS[1])[0]] == [IDS[1]]
    chosen, skipped = select(cat, all_unproven=True, max_age=dt.timedelta(days=7), now=NOW + dt.timedelta(hours=1))
    assert [x.id for x in chosen] == IDS[1:] and list(skipped) == [IDS[0]]
    with pytest.raises(NotDrillable, match="incomplete"):
        select(cat, "2026-03-01_120000")


def test_hash_kv_in_the_manifest_reads_with_and_without_the_key_count() -> None:
    assert _manifest().hash_kv == HashKV(hash=42, revision=100, compact_revision=50, keys=90)
    m = _manifest(hash_kv={"hash": 1, "revision": 100})
    assert m.hash_kv is not None and m.hash_kv.keys is None and m.hash_kv.compact_revision == 0
