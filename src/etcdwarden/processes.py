"""Processes we start, known by PID, and free loopback ports for them.

A child runs in its own session with its output appended to a log file; it is stopped by PID (SIGTERM,
then SIGKILL after a grace period). A PID is alive while ``/proc`` shows it and it is not a zombie (our
own zombie children are reaped on the way). Shared by the member runtimes of ``restore``, the scratch
member and the local demo/test cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from etcdwarden.errors import EtcdwardenError


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``args`` in its own session, stdin closed, stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    finally:
        log.close()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead; our own zombie children are reaped)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_pid(pid: int, grace: float = 10.0) -> bool:
    """SIGTERM ``pid``, wait up to ``grace`` seconds, then SIGKILL; False if it was not running."""
    if not pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    killed = False
    while pid_alive(pid):
        if time.monotonic() > deadline:
            if killed:
                raise EtcdwardenError(f"process {pid} survived SIGKILL for {grace:.0f}s")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed, deadline = True, time.monotonic() + grace
        time.sleep(0.05)
    return True


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the caller binds it soon after)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 a moment ago (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()
