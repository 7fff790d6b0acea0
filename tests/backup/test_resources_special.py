"""``--resources``: regular files, directories and links to them; no devices, FIFOs, sockets (issue 11 item 9)."""

from __future__ import annotations

import json
import os
import socket
import tarfile
from pathlib import Path

import pytest

from etcdwarden.local.cluster import LocalCluster
from tests.cli_helpers import cli


def _bundle_names(out: Path) -> list[str]:
    bundle = next(out.glob("static_kuberesources_*.tar.gz"))
    with tarfile.open(bundle) as tar:
        return [m.name for m in tar.getmembers()]


@pytest.mark.parametrize("special", ["device", "fifo", "socket", "link-to-device"])
def test_special_file_given_is_refused_before_anything_is_written(etcd1: LocalCluster, tmp_path: Path,
                                                                   special: str) -> None:
    path = tmp_path / special
    sock = None
    if special == "device":
        path = Path("/dev/null")
    elif special == "fifo":
        os.mkfifo(path)
    elif special == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    else:
        path.symlink_to("/dev/null")
    try:
        out = tmp_path / "b"
        r = cli("backup", str(out), "--endpoints", etcd1.endpoints[0], "--resources", str(path))
    finally:
        if sock is not None:
            sock.close()
    assert r.code == 2, r.err
    assert str(path) in r.err and "regular files and directories" in r.err
    assert "Traceback" not in r.err
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".etcdwarden.lock")]


def test_special_files_inside_a_directory_are_left_out_with_a_note(etcd1: LocalCluster, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    (pki / "sub").mkdir(parents=True)
    (pki / "ca.crt").write_text("not really a certificate\n")
    (pki / "sub" / "key").write_text("k\n")
    os.mkfifo(pki / "sub" / "pipe")
    (pki / "null").symlink_to("/dev/null")  # a link is kept as a link, never followed
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "manifest.yaml").write_text("kind: Pod\n")
    linked = tmp_path / "linked-dir"
    linked.symlink_to(extra)  # a symlink to a directory is accepted (bundled under its target's path)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(pki / "agent.sock"))
    try:
        out = tmp_path / "b"
        r = cli("backup", str(out), "--endpoints", etcd1.endpoints[0], "--resources", str(pki), str(linked), "-w",
                "json")
    finally:
        sock.close()
    assert r.code == 0, r.err
    assert "left out of the resources bundle" in r.err
    assert str(pki / "sub" / "pipe") in r.err and str(pki / "agent.sock") in r.err
    names = _bundle_names(out)
    rel = str(pki).lstrip("/")
    assert f"{rel}/ca.crt" in names and f"{rel}/sub/key" in names and f"{rel}/null" in names
    assert f"{str(extra).lstrip('/')}/manifest.yaml" in names
    assert f"{rel}/sub/pipe" not in names and f"{rel}/agent.sock" not in names
    with tarfile.open(next(out.glob("static_kuberesources_*.tar.gz"))) as tar:
        kinds = {m.name: m for m in tar.getmembers()}
        assert kinds[f"{rel}/null"].issym()
        assert not any(m.ischr() or m.isblk() or m.isfifo() for m in kinds.values())
    manifest = json.loads(r.out)
    assert sorted(manifest["resources"]["skipped"]) == sorted(
        [f"{pki / 'agent.sock'} (socket)", f"{pki / 'sub' / 'pipe'} (FIFO)"])
