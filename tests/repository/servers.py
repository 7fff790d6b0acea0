"""What the test servers (SeaweedFS, Azurite) share: stopping the process by its PID, reading its log."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


def stop_process(p: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGTERM, a bounded wait, then SIGKILL; nothing to do for a process already gone."""
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


def tail_log(log: Path, n: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return ""
