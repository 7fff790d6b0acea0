"""``etcdwarden demo`` runs the cycle on a local cluster and leaves no process behind."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_and_stops_everything() -> None:
    res = subprocess.run([sys.executable, "-m", "etcdwarden", "demo", "--keys", "300"], capture_output=True,
                         text=True, timeout=180, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "demo finished: OK" in res.stdout
    assert "quorum: yes (3 of 3" in res.stdout
    assert "verified: True" in res.stdout
    assert '"totalKey":' in res.stdout and "TOTAL KEYS" in res.stdout
    pids = [int(p) for p in re.findall(r"pid (\d+)", res.stdout)]
    assert len(pids) == 3
    for pid in pids:
        alive = subprocess.run(["kill", "-0", str(pid)], capture_output=True, check=False).returncode == 0
        assert not alive
