"""Local processes as ``/proc`` shows them: command lines, open files, environment markers, listening ports.

No extra tools (``lsof``, ``ss``, ``fuser``): open files are the ``/proc/PID/fd`` links; the owner of a
listening TCP port is found by matching the socket inode of ``/proc/net/tcp[6]`` with those links.
Processes of other users are visible only to root; a caller that cannot see an owner is told so
(``None``), never given a guess.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from etcdwarden.processes import pid_alive

_LISTEN = "0A"


def pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]] if raw else None


def describe(pid: int, width: int = 120) -> str:
    """``PID 123 (etcd --name a --data-dir /var/lib/etcd ...)``."""
    args = cmdline(pid)
    text = " ".join([os.path.basename(args[0]), *args[1:]]) if args else "?"
    return f"PID {pid} ({text if len(text) <= width else text[: width - 3] + '...'})"


def fd_links(pid: int) -> Iterator[str]:
    """Where the open file descriptors of ``pid`` point (nothing when they cannot be read)."""
    base = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(base)
    except OSError:
        return
    for fd in fds:
        with contextlib.suppress(OSError):
            yield os.readlink(f"{base}/{fd}")


def parent(pid: int) -> int | None:
    """The parent of ``pid`` (``None``: no such process)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def ancestors(pid: int) -> set[int]:
    """The processes ``pid`` descends from (its parent, the parent's parent... up to PID 1)."""
    out: set[int] = set()
    p = parent(pid)
    while p is not None and p > 0 and p not in out:
        out.add(p)
        p = parent(p)
    return out


def open_below(path: Path, exclude: set[int] | None = None) -> dict[int, str]:
    """PIDs with a file descriptor on ``path`` or anything below it, each with one such file."""
    roots = {str(path.absolute()).rstrip("/"), os.path.realpath(path).rstrip("/")}
    skip = exclude or set()
    found: dict[int, str] = {}
    for pid in pids():
        if pid in skip:
            continue
        for link in fd_links(pid):
            if any(link == r or link.startswith(r + "/") for r in roots):
                found[pid] = link
                break
    return found


def data_dir_of(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a == "--data-dir" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--data-dir="):
            return a.split("=", 1)[1]
    return None


def running_on(data_dir: Path) -> list[int]:
    """PIDs of live processes whose command line names ``data_dir`` as their ``--data-dir``."""
    want = {str(data_dir).rstrip("/"), str(data_dir.absolute()).rstrip("/"), os.path.realpath(data_dir)}
    out = []
    for pid in pids():
        args = cmdline(pid)
        d = data_dir_of(args) if args else None
        if d is not None and d.rstrip("/") in want and pid_alive(pid):
            out.append(pid)
    return sorted(out)


def has_env(pid: int, key: str, value: str) -> bool:
    """Whether ``pid`` was started with ``key=value`` in its environment."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{key}={value}".encode() in raw.split(b"\0")


def _addr(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_addr)
    # the kernel prints each 32-bit word in host (little-endian) order
    fixed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(fixed)


def listening_inodes(port: int, host: str | None = None) -> set[int]:
    """Inodes of the TCP sockets listening on ``port`` (on ``host``'s addresses or a wildcard address)."""
    wanted: set[ipaddress.IPv4Address | ipaddress.IPv6Address] | None = None
    if host is not None:
        with contextlib.suppress(OSError, ValueError):
            wanted = {ipaddress.ip_address(str(ai[4][0]).split("%")[0])
                      for ai in socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)}
    out: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] != _LISTEN:
                continue
            addr_hex, _, port_hex = f[1].partition(":")
            if int(port_hex, 16) != port:
                continue
            addr = _addr(addr_hex)
            mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
            if wanted is None or addr.is_unspecified or addr in wanted or (mapped is not None and mapped in wanted):
                out.add(int(f[9]))
    return out


def port_owners(port: int, host: str | None = None) -> tuple[bool, set[int]]:
    """``(listening, pids)``: whether anything listens on ``port`` and the PIDs seen holding those sockets
    (empty when the owner is not visible to us, e.g. another user's process and we are not root)."""
    inodes = listening_inodes(port, host)
    if not inodes:
        return False, set()
    links = {f"socket:[{i}]" for i in inodes}
    owners = {pid for pid in pids() if any(link in links for link in fd_links(pid))}
    return True, owners
