"""The daemon's ``continuous`` section on real etcd: only the leader receives; when it stops (SIGTERM) it writes
its open segment and the next leader resumes after it: one chain, every revision once; the window metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from etcdwarden.daemon.loader import load_config
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.local.ports import free_ports
from etcdwarden.repository.base import open_repository
from etcdwarden.repository.window import read_state, read_window
from tests.backup.receiving import captured, history, workload
from tests.daemon.helpers import daemon_doc, http_get

CONTINUOUS = "continuous:\n  repository: etcd-backup-pvc\n  segmentSeconds: 1s\n  lease: 3s\n"


def _holder(repo_dir: Path, not_pid: int | None = None, revision: int = 0, timeout: float = 60.0) -> int:
    """The PID of the agent receiving (its state names a base and has ``revision`` durable)."""
    repo = open_repository(repo_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = read_state(repo) if (repo_dir / ".etcdwarden-receive.json").exists() else None
        if st is not None and st.base and not st.stopped and st.holder.pid != not_pid and st.revision >= revision:
            return st.holder.pid
        time.sleep(0.2)
    raise AssertionError(f"no agent received up to revision {revision} within {timeout}s")


def test_the_leader_receives_and_hands_over(etcd1: LocalCluster, tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(daemon_doc(repo_dir, etcd1.endpoints, ttl="5s", extra=CONTINUOUS))
    assert load_config([cfg]).continuous is not None
    ports = free_ports(2)
    env = {**os.environ, "GRPC_VERBOSITY": "NONE"}
    agents = {}
    for i, port in enumerate(ports):
        with open(tmp_path / f"a{i}.log", "wb") as log:
            p = subprocess.Popen([sys.executable, "-m", "etcdwarden", "daemon", "--config", str(cfg), "--agent-name",
                                  f"a{i}", "--listen", f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env)
        agents[p.pid] = (p, port)
    try:
        end = workload(etcd1.endpoints, 40, "one")
        first = _holder(repo_dir, revision=end)
        _, port = agents[first]
        metrics = http_get(port, "/metrics")[1]
        assert 'etcdwarden_receive_running{repository="etcd-backup-pvc"} 1.0' in metrics, metrics
        assert "etcdwarden_recoverable_window_end_timestamp" in metrics
        other = next(p for p in agents if p != first)
        # the follower does not receive
        running = 'etcdwarden_receive_running{repository="etcd-backup-pvc"} 1.0'
        assert running not in http_get(agents[other][1], "/metrics")[1]
        agents[first][0].send_signal(signal.SIGTERM)
        assert agents[first][0].wait(30) == 0
        end = workload(etcd1.endpoints, 40, "two")
        assert _holder(repo_dir, not_pid=first, revision=end) == other
    finally:
        for p, _ in agents.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
    repo = open_repository(repo_dir)
    (chain,) = read_window(repo, rehash=True).chains
    assert chain.broken is None and chain.end.revision == end
    revs, _, base = captured(repo)
    assert revs == history(etcd1.endpoints, base + 1, end)
    logs = (tmp_path / "a0.log").read_text() + (tmp_path / "a1.log").read_text()
    assert "resuming the chain" in logs
