"""Issue 11 item 21: a job record in etcd that is valid JSON of the wrong shape (``[]``, ``null``, a string, a
field of the wrong type) crashed the daemon with a traceback, and no backup ran until it was fixed by hand.
Every record that does not validate is logged, reset, and the job runs; the decoder is fuzzed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdwarden.daemon.jobs import JobExecutor
from etcdwarden.daemon.loader import load_config
from etcdwarden.daemon.metrics import DaemonMetrics, JobInfo
from etcdwarden.daemon.spec import DaemonConfig
from etcdwarden.daemon.state import JobState, MemoryStateStore, StateInvalid, decode
from etcdwarden.local.cluster import LocalCluster
from tests.cli_helpers import cli
from tests.conftest import etcdctl
from tests.daemon.helpers import FakeClock, ScriptedRunner, daemon_doc, manifests

UTC = dt.UTC
JOBS = ("backups:\n  - name: nightly\n    schedule: '0 3 * * *'\n    timeZone: Europe/Berlin\n"
        "    repository: etcd-backup-pvc\n    retention: {keepLast: 20}\n"
        "defrag:\n  - name: nightly-defrag\n    schedule: '30 3 * * *'\n    timeZone: Europe/Berlin\n")
BAD = ["[]", "null", '"a string"', "42", "not json {", '{"running": []}', '{"successes": -1}',
       '{"last_finished": "2024-05-01T00:00:00"}', '{"attempt_log": "x"}', '{"prune": {"deleted": 5}}',
       '{"last_slot": "0001-01-01T00:00:00+00:00"}', '{"details": {"defragmented": "many"}}']


def test_a_record_of_the_wrong_shape_is_reset_and_the_backup_runs(etcd1: LocalCluster, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    path = tmp_path / "daemon.yaml"
    path.write_text(daemon_doc(repo, etcd1.endpoints) + JOBS)
    assert cli("backup", str(repo), "--endpoints", ",".join(etcd1.endpoints)).code == 0  # the repository is not empty
    for i, bad in enumerate(BAD):
        for key in ("backup/nightly", "defrag/nightly-defrag"):
            etcdctl(etcd1, "put", f"/etcdwarden/daemon/state/{key}", bad)
        time.sleep(1.05)  # backup IDs have a one-second resolution
        res = cli("-w", "json", "daemon", "--once", "--config", str(path))
        assert res.code == 0 and "Traceback" not in res.err, (bad, res.err)
        runs = [(r["job"], r["result"]) for r in json.loads(res.out)["runs"]]
        assert runs == [("nightly", "success")], (bad, res.err)  # the backup runs; the defrag waits for its slot
        assert "job nightly: its state record does not validate" in res.err, (bad, res.err)
        assert "job nightly runs now: its state record was reset" in res.err, (bad, res.err)
        assert "job nightly-defrag: its state record does not validate" in res.err, (bad, res.err)
        assert "job nightly-defrag: no run recorded yet; its first run is at its first slot" in res.err
        assert len(manifests(repo)) == i + 2
        for key in ("backup/nightly", "defrag/nightly-defrag"):  # what is stored now validates
            raw = etcdctl(etcd1, "get", f"/etcdwarden/daemon/state/{key}", "--print-value-only").strip()
            JobState.from_json(raw.encode())


@pytest.mark.unit
@pytest.mark.parametrize("raw", [b"[]", b"null", b'"x"', b"\xff\xfe", b"{", b'{"successes": 1e400}',
                                 b'{"last_duration": Infinity}', b'{"retry_at": "2024-05-01"}',
                                 b'{"successes": ' + b"9" * 400 + b"}", b" " * (2 * 1024 * 1024),
                                 # no UTC time exists for these (OverflowError, found by the fuzz test below)
                                 b'{"last_slot": "0001-01-01T00:00:00+00:05"}',
                                 b'{"retry_at": "9999-12-31T23:59:59-01:00"}'])
def test_the_decoder_names_the_problem(raw: bytes) -> None:
    with pytest.raises(StateInvalid):
        JobState.from_json(raw)
    st = decode("backup/x", raw)
    assert st.invalid and st == JobState()


_CONFIGS: dict[Path, DaemonConfig] = {}


def _config(tmp_path: Path) -> DaemonConfig:
    if tmp_path in _CONFIGS:
        return _CONFIGS[tmp_path]
    p = tmp_path / "d.yaml"
    p.write_text(daemon_doc(tmp_path / "repo", election=False) + JOBS + "---\n" + (
        "apiVersion: operator.openshift.io/v1alpha1\nkind: EtcdBackup\nmetadata: {name: once, namespace: x}\n"
        "spec: {pvcName: etcd-backup-pvc}\n"))
    _CONFIGS[tmp_path] = load_config([p])
    return _CONFIGS[tmp_path]


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                  max_size=4), max_leaves=20)
_times = st.datetimes(timezones=st.sampled_from([UTC, dt.timezone(dt.timedelta(hours=5))]) | st.none(),
                      allow_imaginary=True).map(lambda t: t.isoformat())
_field_values: dict[str, Any] = {
    name: st.one_of(_json, _times, st.integers(min_value=-5, max_value=10**20))
    for name in ("last_slot", "last_started", "last_finished", "last_success", "retry_at", "first_seen",
                 "successes", "failures", "attempt", "retries", "final_failures", "prune_failures",
                 "last_duration", "last_size", "last_revision", "last_result", "running", "prune", "details",
                 "attempt_log", "first_run", "last_error", "uid")
}
_records = st.one_of(
    st.binary(max_size=200),
    _json.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional=_field_values).map(lambda d: json.dumps(d, default=str).encode()),
)


@pytest.mark.unit
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=_records)
def test_fuzzed_records_never_crash_the_scheduler(tmp_path: Path, raw: bytes) -> None:
    """Whatever bytes are stored, decoding never raises; what it returns round-trips and the executor, the
    retry logic and the metrics all work with it."""
    st_ = decode("backup/nightly", raw)
    assert JobState.from_json(st_.to_json()) == st_
    cfg = _config(tmp_path)
    store = MemoryStateStore()
    for key in ("backup/nightly", "defrag/nightly-defrag", "single/x/once"):
        store.data[key] = raw
    clock = FakeClock(dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    ex = JobExecutor(cfg, ScriptedRunner(existing=1), store, "agent-a", clock)

    async def go() -> None:
        states = await store.load()
        await ex.clear_stale(states)
        await ex.adopt(clock(), states)
        await ex.drop_stale_retries(clock(), states)
        ex.next_wakeup(clock(), states)
        ex.pending_retries(states)
        for _ in range(3):
            due = ex.due_jobs(clock(), states)
            if not due:
                break
            await ex.run(*due[0], states)
            states = await store.load()
        for v in states.values():
            assert v.invalid is None  # every record was reset or kept; what is stored now validates
        for raw_now in store.data.values():
            JobState.from_json(raw_now)
        # the metrics render whatever a valid record holds
        metrics = DaemonMetrics("agent-a", "test")
        metrics.view.jobs = {"backup/nightly": (JobInfo("backup/nightly", "nightly", "backup", "r", 86400.0), st_),
                             "defrag/d": (JobInfo("defrag/d", "d", "defrag", "", 86400.0), st_)}
        metrics.render()

    asyncio.run(go())
