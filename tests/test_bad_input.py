"""Bad input gets one clear line and exit 2, never a traceback (issue 11 item 7)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.cli_helpers import Result, cli


def closed_endpoint() -> str:
    """A 127.0.0.1 endpoint nobody listens on (a free port, closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _one_clear_line(r: Result, code: int, *needles: str) -> None:
    assert r.code == code, (r.code, r.err)
    assert "Traceback" not in r.err and "Error" in r.err
    for n in needles:
        assert n in r.err, r.err


@pytest.mark.parametrize("command", [["config", "validate"], ["daemon", "--config"]])
def test_config_not_utf8(tmp_path: Path, command: list[str]) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("apiVersion: etcdwarden.io/v1alpha1\nkind: DaemonConfig\n# caf\xe9\n".encode("latin-1"))
    r = cli(*command, str(bad))
    _one_clear_line(r, 2, str(bad), "not UTF-8", "offset", "save the file as UTF-8")
    assert f"{bad}:3" in r.err  # the line of the bad byte


@pytest.mark.parametrize("command", [["config", "validate"], ["daemon", "--config"]])
@pytest.mark.timeout(20)
def test_config_not_a_regular_file(tmp_path: Path, command: list[str]) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    r = cli(*command, str(fifo))
    _one_clear_line(r, 2, str(fifo), "not a regular file")
    r = cli(*command, "/dev/null")
    _one_clear_line(r, 2, "/dev/null", "not a regular file")


def test_backup_directory_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    ep = closed_endpoint()
    r = cli("backup", str(f), "--endpoints", ep, "--dial-timeout", "200ms")
    _one_clear_line(r, 2, str(f), "is a file", "name a directory")
    r = cli("backup", f"file://{f}", "--endpoints", ep, "--dial-timeout", "200ms")
    _one_clear_line(r, 2, str(f), "is a file")
    assert f.read_text() == "x"


def test_backup_directory_below_a_file(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    r = cli("backup", str(f / "sub" / "dir"), "--endpoints", closed_endpoint(), "--dial-timeout", "200ms")
    _one_clear_line(r, 2, str(f / "sub" / "dir"), f"{f} is a file", "nothing can be created below it")
    r = cli("backup", str(tmp_path / "b"), "--resources-dir", "/dev/null/x", "--endpoints", closed_endpoint())
    _one_clear_line(r, 2, "/dev/null is a device", "nothing can be created below it")
    assert not (tmp_path / "b").exists()


def test_resources_dir_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    out = tmp_path / "b"
    r = cli("backup", str(out), "--resources-dir", str(f), "--endpoints", closed_endpoint(), "--dial-timeout", "200ms")
    _one_clear_line(r, 2, "--resources-dir", str(f), "is a file")
    assert not out.exists()  # checked before anything was created
