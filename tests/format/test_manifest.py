"""The manifest model: version-1 files written by etcdwarden before format 2 still read; the one validator
names the first problem; a newer format is refused; dump and load round-trip."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdwarden.format.manifest import (
    FORMAT,
    HashKV,
    Manifest,
    ManifestError,
    ManifestTooNew,
    dump,
    load,
)

FIXTURES = Path(__file__).parent / "fixtures"
TS = "2026-01-01_000000"
SHA = hashlib.sha256(b"x").hexdigest()

pytestmark = pytest.mark.unit


def v1_fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("v1-*/backup_*.json"))


def id_of(path: Path) -> str:
    return path.name[len("backup_"):-len(".json")]


def test_real_v1_manifests_read() -> None:
    paths = v1_fixtures()
    assert len(paths) == 2
    for path in paths:
        raw = json.loads(path.read_text())
        assert raw["format"] == 1
        m = load(path.read_bytes(), id_of(path))
        assert m.source_format == 1 and m.format == FORMAT
        assert m.timestamp == raw["timestamp"] and m.cluster_id == raw["cluster_id"]
        assert m.snapshot_file == raw["snapshot"]["file"] and m.verified is True
        assert m.snapshot_revision == raw["status"]["revision"] and m.total_key == raw["status"]["totalKey"]
        assert m.server_version == "3.5.1" and m.member is not None and m.member.name == "m1"
        assert {k: {"sha256": f.sha256, "size": f.size} for k, f in m.files.items()} == raw["files"]
        for name, entry in raw["files"].items():  # the files are the ones the manifest describes
            data = (path.parent / name).read_bytes()
            assert (hashlib.sha256(data).hexdigest(), len(data)) == (entry["sha256"], entry["size"])
        # every field of version 1 survives the migration, unchanged but for the format number and the
        # spelling of the time zone
        again = m.as_json()
        assert again.pop("format") == 2 and raw.pop("format") == 1
        assert again.pop("created_at").replace("Z", "+00:00") == raw.pop("created_at")
        assert again == raw
    plain = load(paths[0].read_bytes(), id_of(paths[0]))
    assert plain.resources is not None and plain.resources.files == 2 and plain.key_names == ["key1"]
    assert plain.release == "4.14.3" and plain.hash_kv is None
    zstd = load(paths[1].read_bytes(), id_of(paths[1]))
    assert zstd.snapshot.compression == "zstd" and zstd.resources is None
    assert zstd.verification is not None and zstd.verification.roundtrip is True


def test_dump_load_round_trip_and_hash_kv_only_when_set() -> None:
    path = v1_fixtures()[0]
    m = load(path.read_bytes(), id_of(path))
    data = dump(m)
    assert b'"hash_kv"' not in data and json.loads(data)["format"] == FORMAT
    back = load(data, m.timestamp)
    assert back.source_format == FORMAT and back.as_json() == m.as_json()
    m.hash_kv = HashKV(hash=123, revision=23, compact_revision=0)
    back = load(dump(m), m.timestamp)
    assert back.hash_kv == m.hash_kv and json.loads(dump(m))["hash_kv"]["hash"] == 123


def minimal_v1(**extra: Any) -> dict[str, Any]:
    """What version-1 readers accepted: a ``files`` map (``snapshot verify`` did not even need a timestamp)."""
    return {"files": {f"snapshot_{TS}.db": {"sha256": SHA, "size": 1}}, **extra}


def test_v1_missing_optional_fields() -> None:
    m = load(json.dumps(minimal_v1()), TS)
    assert m.source_format == 1 and m.timestamp == TS and m.snapshot_file == f"snapshot_{TS}.db"
    assert m.verified is False and m.cluster_id is None and m.member is None and m.snapshot_revision is None
    assert m.server_version is None and m.key_names == [] and m.resources is None
    # the snapshot section is derived from the file name; a bundle listed in files becomes the resources
    doc = minimal_v1(format=1)
    doc["files"] = {f"snapshot_{TS}.db.zst.age": {"sha256": SHA.upper(), "size": 7},
                    f"static_kuberesources_{TS}.tar.gz.age": {"sha256": SHA, "size": 3}}
    m = load(json.dumps(doc), TS)
    assert (m.snapshot.compression, m.snapshot.encryption) == ("zstd", "age")
    assert m.files[f"snapshot_{TS}.db.zst.age"].sha256 == SHA  # version 1 compared digests case-insensitively
    assert m.resources is not None and m.resources.file == f"static_kuberesources_{TS}.tar.gz.age"
    assert m.resources.size == 3
    # without an expected ID (a manifest read on its own) the timestamp must be in it
    with pytest.raises(ManifestError, match="timestamp"):
        load(json.dumps(minimal_v1()))


def test_extra_unknown_fields_are_kept() -> None:
    path = v1_fixtures()[0]
    doc = json.loads(path.read_text())
    doc.update(future_field={"x": [1]}, version=1)
    doc["files"][doc["snapshot"]["file"]]["crc32c"] = "abcd"
    doc["member"]["zone"] = "eu-1"
    m = load(json.dumps(doc), id_of(path))
    out = json.loads(dump(m))
    assert out["future_field"] == {"x": [1]} and out["version"] == 1 and out["member"]["zone"] == "eu-1"
    assert out["files"][doc["snapshot"]["file"]]["crc32c"] == "abcd"
    # a version-1 manifest without the fields format 2 requires still reads, but is never written as format 2
    m = load(json.dumps(minimal_v1(future_field=1)), TS)
    assert m.model_extra == {"future_field": 1}
    with pytest.raises(ManifestError, match="tool: required"):
        dump(m)


def test_newer_format_refused() -> None:
    path = v1_fixtures()[0]
    doc = json.loads(path.read_text())
    doc["format"] = FORMAT + 1
    doc["something_new"] = {"we": "cannot know"}
    with pytest.raises(ManifestTooNew) as e:
        load(json.dumps(doc), id_of(path))
    assert "newer etcdwarden" in str(e.value) and "upgrade" in str(e.value)


def v2() -> dict[str, Any]:
    path = v1_fixtures()[0]
    doc: dict[str, Any] = json.loads(dump(load(path.read_bytes(), id_of(path))))
    return doc


def broken(change: Any) -> str:
    doc = v2()
    change(doc)
    return fails(json.dumps(doc), doc.get("timestamp"))


def fails(raw: str | bytes, expected_id: str | None = TS) -> str:
    with pytest.raises(ManifestError) as e:
        load(raw, expected_id)
    return e.value.problem


def test_first_problem_is_named() -> None:
    assert "not valid JSON" in fails(b"{not json")
    assert "not a JSON object" in fails(b"[1]")
    assert "not a manifest format" in broken(lambda d: d.update(format="2"))
    assert "not a manifest format" in broken(lambda d: d.update(format=True))
    assert broken(lambda d: d.update(revision="23")).startswith("revision: Input should be a valid integer")
    assert broken(lambda d: d.update(revision=True)).startswith("revision:")
    assert broken(lambda d: d["member"].update(name=5)).startswith("member.name:")
    assert broken(lambda d: d["files"][next(iter(d["files"]))].update(sha256="xyz")).startswith("files.")
    assert broken(lambda d: d["files"][next(iter(d["files"]))].update(size=-1)).startswith("files.")
    assert broken(lambda d: d["status"].pop("totalKey")).startswith("status.totalKey: Field required")
    assert "required in a format-2 manifest" in broken(lambda d: d.pop("cluster_id"))
    assert "is not its name's" in fails(json.dumps(v2()), "2026-01-02_000000")

    def other_ts(d: dict[str, Any]) -> None:
        name = next(n for n in d["files"] if n.startswith("static_"))
        d["files"]["static_kuberesources_2024-05-01_130000.tar.gz"] = d["files"].pop(name)
    assert "not from the backup's timestamp" in broken(other_ts)
    assert "not the name of a snapshot" in broken(lambda d: d["files"].update({"../etc/passwd": d["files"][
        next(iter(d["files"]))]}))
    assert "more than one snapshot" in broken(lambda d: d["files"].update({d["snapshot"]["file"] + ".zst": d[
        "files"][d["snapshot"]["file"]]}))
    assert "lists no snapshot" in broken(lambda d: d["files"].pop(d["snapshot"]["file"]))
    assert "snapshot.compression" in broken(lambda d: d["snapshot"].update(compression="zstd"))
    assert "snapshot.compression" in broken(lambda d: d["snapshot"].update(compression="gzip"))
    assert "snapshot.encryption" in broken(lambda d: d["snapshot"].update(encryption="age"))
    assert "snapshot.file" in broken(lambda d: d["snapshot"].update(file="snapshot_2026-01-01_000000.db"))
    assert "differ from its entry" in broken(lambda d: d["resources"].update(size=1))
    assert "no \"files\" map" in broken(lambda d: d.update(files={}))


def test_dump_refuses_what_load_would() -> None:
    path = v1_fixtures()[0]
    m = load(path.read_bytes(), id_of(path))
    bad = m.model_copy(deep=True)
    bad.files = {}
    with pytest.raises(ManifestError, match="files"):
        dump(bad)
    bad = m.model_copy(deep=True)
    bad.format = 1
    with pytest.raises(ManifestError, match="format"):
        dump(bad)


_names = st.text(alphabet="abcdefghijklmnop0123456789-", min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(revision=st.integers(0, 2**63 - 1), size=st.integers(0, 2**40), keys=st.lists(_names, max_size=4),
       compression=st.sampled_from([None, "zstd"]), encrypted=st.booleans(), bundle=st.booleans(),
       hash_kv=st.one_of(st.none(), st.integers(0, 2**32 - 1)), release=st.one_of(st.none(), _names))
def test_round_trip_property(revision: int, size: int, keys: list[str], compression: str | None, encrypted: bool,
                             bundle: bool, hash_kv: int | None, release: str | None) -> None:
    base = v2()
    doc = copy.deepcopy(base)
    snap = f"snapshot_{TS}.db" + (".zst" if compression else "") + (".age" if encrypted else "")
    doc.update(timestamp=TS, revision=revision, release=release, encryption_at_rest={"key_names": keys})
    doc["snapshot"] = {"file": snap, "compression": compression, "encryption": "age" if encrypted else None}
    doc["files"] = {snap: {"sha256": SHA, "size": size}}
    if bundle:
        res = f"static_kuberesources_{TS}.tar.gz" + (".age" if encrypted else "")
        doc["files"][res] = {"sha256": SHA, "size": 5}
        doc["resources"] = {**doc["resources"], "file": res, "sha256": SHA, "size": 5}
    else:
        doc["resources"] = None
    if hash_kv is not None:
        doc["hash_kv"] = {"hash": hash_kv, "revision": revision, "compact_revision": 0}
    m = load(json.dumps(doc), TS)
    assert load(dump(m), TS) == m
    assert m.size() == size + (5 if bundle else 0)
    assert Manifest.model_validate(m.as_json()) == m
