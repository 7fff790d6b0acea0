"""``etcdwarden demo`` runs the cycle on a local cluster and leaves no process behind."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.etcd


def test_demo_runs_and_stops_everything() -> None:
    res = subprocess.run([sys.executable, "-m", "etcdwarden", "demo", "--keys", "300"], capture_output=True,
                         text=True, timeout=180, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "demo finished: OK" in res.stdout
    assert "quorum: yes (3 of 3" in res.stdout
    assert "verified: True" in res.stdout
    assert '"totalKey":' in res.stdout and "TOTAL KEYS" in res.stdout
    # the backup is drilled: restored into a throwaway member and proven against its manifest
    assert "$ etcdwarden backups drill" in res.stdout and "drill PASSED" in res.stdout and "hash_kv" in res.stdout
    # backup -> receive -> damage at a known time -> restore to one second before it -> verify
    assert "$ etcdwarden receive" in res.stdout and "--to-time" in res.stdout
    assert "point-in-time restore to revision" in res.stdout and "restored with its ID and TTL" in res.stdout
    assert "secrets deleted" in res.stdout
    assert res.stdout.count(": identical (") == 3 and "DIFFERENT" not in res.stdout
    assert res.stdout.count(".pre-restore-") == 3
    pids = [int(p) for p in re.findall(r"pid (\d+)", res.stdout)]
    assert len(pids) == 3
    assert "etcd" not in subprocess.run(["pgrep", "-a", "-f", "etcdwarden-demo-"], capture_output=True,
                                        text=True, check=False).stdout
    for pid in pids:
        alive = subprocess.run(["kill", "-0", str(pid)], capture_output=True, check=False).returncode == 0
        assert not alive
