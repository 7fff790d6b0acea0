"""Point-in-time restore, the parts that need no server: ``--to-time`` parsing and the CLI's bad input."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from etcdwarden.errors import UsageError
from etcdwarden.restore.pitr_target import parse_time
from etcdwarden.snapshot.wal import fields
from tests.cli_helpers import cli

pytestmark = pytest.mark.unit

UTC = dt.UTC


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-02T10:15:05Z", dt.datetime(2026, 12, 2, 10, 15, 5, tzinfo=UTC)),
    ("2026-12-02t10:15:05z", dt.datetime(2026, 12, 2, 10, 15, 5, tzinfo=UTC)),
    ("2026-12-02T10:15:05.25Z", dt.datetime(2026, 12, 2, 10, 15, 5, 250000, tzinfo=UTC)),
    ("2026-12-02T10:15:05.123456789Z", dt.datetime(2026, 12, 2, 10, 15, 5, 123456, tzinfo=UTC)),
    ("2026-12-02T11:15:05.5+01:00", dt.datetime(2026, 12, 2, 10, 15, 5, 500000, tzinfo=UTC)),
    ("2026-12-02T05:45:05-04:30", dt.datetime(2026, 12, 2, 10, 15, 5, tzinfo=UTC)),
    ("2026-12-02 10:15:05+00:00", dt.datetime(2026, 12, 2, 10, 15, 5, tzinfo=UTC)),
])
def test_rfc3339_times(text: str, expected: dt.datetime) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["2026-12-02T10:15:05", "yesterday", "2026-12-02", "2026-13-02T10:15:05Z",
                                  "2026-12-02T10:15:05+25:00", "1764670505"])
def test_bad_times_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--to-time"):
        parse_time(text)


def test_lease_records_of_the_snapshot_are_read() -> None:
    # leasepb.Lease{ID: 0x1234567890, TTL: 60, RemainingTTL: 0}
    lid = 0x1234567890
    raw = bytearray([0x08])
    v = lid
    while v >= 0x80:
        raw.append((v & 0x7F) | 0x80)
        v >>= 7
    raw += bytes([v, 0x10, 60])
    assert fields(bytes(raw)) == {1: lid, 2: 60}  # the parser snapshot_leases uses


def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["restore", "member", str(tmp_path), "--data-dir", str(tmp_path / "d"), "--name", "m0",
              "--initial-cluster", "m0=http://127.0.0.1:2380"]
    r = cli(*common, "--to-time", "tomorrow")
    assert r.code == 2 and "RFC 3339" in r.err and "Traceback" not in r.err
    r = cli(*common, "--to-revision", "0")
    assert r.code == 2 and "1 or more" in r.err
    r = cli(*common, "--to-revision", "5", "--no-segments")
    assert r.code == 2 and "not allowed with" in capsys.readouterr().err  # argparse's own message
    snap = tmp_path / "x.db"
    snap.write_bytes(b"\0" * 100)
    r = cli(*[a if a != str(tmp_path) else str(snap) for a in common], "--to-revision", "5")
    assert r.code == 2 and "need a repository" in r.err
    assert not (tmp_path / "d").exists()
