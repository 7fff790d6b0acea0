"""Bad input gets one clear line and exit 2, never a traceback (issue 11 item 7)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.cli_helpers import Result, cli

pytestmark = pytest.mark.unit


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
def test_config_with_control_characters(tmp_path: Path, command: list[str]) -> None:
    bad = tmp_path / "nul.yaml"
    bad.write_bytes(b"\x00")  # found by tests/test_fuzz_cli.py: YAML's reader refused it before the parse began
    r = cli(*command, str(bad))
    _one_clear_line(r, 2, str(bad), "not valid YAML")


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


@pytest.mark.timeout(30)
@pytest.mark.parametrize("argv", [
    ["snapshot", "status", "{fifo}"],
    ["snapshot", "verify", "{fifo}"],
    ["snapshot", "status", "{file}", "--identity", "{fifo}"],
    ["restore", "cluster", "{dir}", "--spec", "{fifo}", "--dry-run"],
    ["encryption", "status", "--config", "{fifo}"],
    ["backup", "{dir}/out", "--encryption-config", "{fifo}"],
    ["endpoint", "status", "--cacert", "{fifo}"],
])
def test_a_fifo_where_a_file_is_read_is_refused_not_waited_on(tmp_path: Path, argv: list[str]) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "file").write_bytes(b"\0" * 4096)
    args = [a.format(fifo=fifo, file=tmp_path / "file", dir=tmp_path) for a in argv]
    r = cli(*args, "--endpoints", closed_endpoint(), "--dial-timeout", "200ms")
    _one_clear_line(r, 2, str(fifo), "is a FIFO, not a regular file")


def test_paths_that_cannot_be_used(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    r = cli("snapshot", "status", str(loop))
    _one_clear_line(r, 2, str(loop), "symlink loop")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    r = cli("backup", str(dangling), "--endpoints", closed_endpoint())
    _one_clear_line(r, 2, str(dangling), "does not exist")
    long = tmp_path / ("n" * 300)
    r = cli("backups", "list", str(long))
    _one_clear_line(r, 2, "name is too long")
    r = cli("snapshot", "get", str(tmp_path), "/k")
    _one_clear_line(r, 2, "is a directory; name a file")
    r = cli("snapshot", "status", str(tmp_path))  # a directory is read as a backup directory
    _one_clear_line(r, 2, "no backup manifest")


def test_unreadable_inputs_are_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"members:\n  - name: caf\xe9\n")
    r = cli("member", "replace", "m1", "--spec", str(spec), "--dry-run", "--endpoints", closed_endpoint())
    _one_clear_line(r, 2, "not UTF-8", str(spec))
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 20000)
    r = cli("encryption", "status", "--config", str(deep), "--endpoints", closed_endpoint())
    _one_clear_line(r, 2, "nested too deeply", str(deep))
    repo_cfg = tmp_path / "repo.yaml"
    repo_cfg.write_bytes(b"\x80\x81")
    r = cli("backup", str(tmp_path / "b"), "--repository-config", str(repo_cfg), "--endpoints", closed_endpoint())
    _one_clear_line(r, 2, "--repository-config", "not UTF-8")
