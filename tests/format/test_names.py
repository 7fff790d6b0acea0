"""The names of every artifact, and the one timestamp pattern."""

from __future__ import annotations

import datetime as dt

import pytest

from etcdwarden.errors import UsageError
from etcdwarden.format.names import BackupNames, Kind, is_temp, parse, parse_id, timestamp

TS = "2026-01-01_000000"

pytestmark = pytest.mark.unit


def test_timestamp_and_id() -> None:
    t = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert timestamp(t) == "2026-03-04_030607"
    assert parse_id("2026-03-04_030607") == dt.datetime(2026, 3, 4, 3, 6, 7, tzinfo=dt.UTC)
    for bad in ("2026-13-01_000000", "2026-01-01", "nonsense", "2026-01-01_0000000"):
        with pytest.raises(UsageError):
            parse_id(bad)


def test_names_of_one_backup() -> None:
    n = BackupNames(TS, "zstd", True)
    assert (n.snapshot, n.resources, n.manifest) == (f"snapshot_{TS}.db.zst.age",
                                                    f"static_kuberesources_{TS}.tar.gz.age", f"backup_{TS}.json")
    assert BackupNames(TS).snapshot == f"snapshot_{TS}.db"
    assert n.drill == f"drill_{TS}.json"
    assert n.segment(42) == f"segment_{TS}_0000000000000000042.zst"
    assert n.segment_manifest(42) == f"segment_{TS}_0000000000000000042.json"
    assert n.segment(9) < n.segment(10) < n.segment(2**63 - 1)  # names sort in revision order


@pytest.mark.parametrize(("name", "kind", "temp"), [
    (f"backup_{TS}.json", Kind.MANIFEST, False),
    (f"snapshot_{TS}.db", Kind.SNAPSHOT, False),
    (f"snapshot_{TS}.db.zst.age", Kind.SNAPSHOT, False),
    (f"static_kuberesources_{TS}.tar.gz", Kind.RESOURCES, False),
    (f"static_kuberesources_{TS}.tar.gz.age", Kind.RESOURCES, False),
    (f"drill_{TS}.json", Kind.DRILL, False),
    (f"segment_{TS}_0000000000000000042.zst", Kind.SEGMENT, False),
    (f"segment_{TS}_0000000000000000042.json", Kind.SEGMENT_MANIFEST, False),
    (f"snapshot_{TS}.db.part", Kind.SNAPSHOT, True),
    (f".snapshot_{TS}.db.verify.part", Kind.SNAPSHOT, True),
    (f".snapshot_{TS}.db.zst.verify.part", Kind.SNAPSHOT, True),
    (f".backup_{TS}.json.tmp-123", Kind.MANIFEST, True),
    (f"static_kuberesources_{TS}.tar.gz.part", Kind.RESOURCES, True),
    (f".drill_{TS}.json.tmp-9", Kind.DRILL, True),
    (f"segment_{TS}_0000000000000000042.zst.part", Kind.SEGMENT, True),
])
def test_parse(name: str, kind: Kind, temp: bool) -> None:
    n = parse(name)
    assert n is not None and (n.kind, n.id, n.temp) == (kind, TS, temp)
    assert is_temp(name) == temp


def test_parse_details() -> None:
    n = parse(f"snapshot_{TS}.db.zst.age")
    assert n is not None and n.compression == "zstd" and n.encrypted and n.is_data
    n = parse(f"segment_{TS}_0000000000000001000.zst")
    assert n is not None and n.revision == 1000 and not n.is_data


@pytest.mark.parametrize("name", [
    f"snapshot_{TS}.db.orig", "notes.txt", "lost+found", ".etcdwarden.lock", "snapshot_2026-01-01.db",
    f"backup_{TS}.json.bak", f".backup_{TS}.json.verify.part", f"segment_{TS}_42.zst", f"drill_{TS}.yaml",
    f"snapshot_{TS}.db.zst.zst", f"backup_{TS}.json.tmp-", f"backup_{TS}.json.part.part",
])
def test_not_ours(name: str) -> None:
    assert parse(name) is None and not is_temp(name)


def test_temporary_names_as_one_regex_would_say() -> None:
    """``is_temp`` agrees with the one regex it replaced (kept here as the specification), name by name."""
    import itertools
    import re

    finals = [f"snapshot_{TS}.db", f"snapshot_{TS}.db.zst.age", f"static_kuberesources_{TS}.tar.gz",
              f"backup_{TS}.json", f"drill_{TS}.json", f"segment_{TS}_0000000000000000042.zst",
              f"segment_{TS}_0000000000000000042.json", f"snapshot_{TS}.dbx", f"notes_{TS}.json"]
    final_re = "|".join(["snapshot_{ts}\\.db(?:\\.zst)?(?:\\.age)?", "static_kuberesources_{ts}\\.tar\\.gz(?:\\.age)?",
                         "backup_{ts}\\.json", "segment_{ts}_\\d{{19}}\\.(?:zst|json)", "drill_{ts}\\.json"])
    ts = r"\d{4}-\d{2}-\d{2}_\d{6}"
    finals_re = final_re.format(ts=ts)
    verify_re = rf"snapshot_{ts}\.db(?:\.zst)?(?:\.age)?\.verify"
    spec = re.compile(rf"^\.?(?:(?:{finals_re})|(?:{verify_re}))(?:\.part|\.tmp-\d+)$")
    seen = 0
    for dot, final, mid, end in itertools.product(["", "."], finals, ["", ".verify", ".verify.verify", ".part"],
                                                  ["", ".part", ".tmp-7", ".tmp-", ".part.part", ".verify"]):
        name = dot + final + mid + end
        assert is_temp(name) == bool(spec.match(name)), name
        seen += bool(spec.match(name))
    assert seen > 20
