"""``encryptionRotation``: strict config, scheduling with a fake clock, and the default runner against etcd."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from etcdwarden.daemon.jobs import JobExecutor
from etcdwarden.daemon.loader import ConfigError, load_config
from etcdwarden.daemon.runner import DefaultRunner, RotationOutcome
from etcdwarden.daemon.schedule import Due
from etcdwarden.daemon.spec import DaemonConfig, RotationSpec
from etcdwarden.daemon.state import FAILURE, SUCCESS, MemoryStateStore
from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.errors import EtcdwardenError
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from tests.cli_helpers import cli
from tests.daemon.helpers import FakeClock, ScriptedRunner, arun, daemon_doc
from tests.encryption.k8sdata import seed
from tests.encryption.test_rollout import apiservers

UTC = dt.UTC
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # a Wednesday


def config(tmp_path: Path, section: str, endpoints: list[str] | None = None) -> DaemonConfig:
    p = tmp_path / "d.yaml"
    p.write_text(daemon_doc(tmp_path / "repo", endpoints=endpoints, election=False, tick="0.05s") + section)
    return load_config([p])


def problems(tmp_path: Path, section: str) -> str:
    with pytest.raises(ConfigError) as ei:
        config(tmp_path, section)
    return str(ei.value)


@pytest.mark.unit
def test_defaults_and_strict_validation(tmp_path: Path) -> None:
    cfg = config(tmp_path, "encryptionRotation:\n  config: /etc/kubernetes/enc.yaml\n")
    (rot,) = cfg.rotations
    assert rot.key == "rotate/encryption-rotation" and rot.kind == "rotate"
    assert rot.schedule.expr == "0 3 * * 0" and rot.schedule.tz_name == "UTC"
    assert rot.options.rollout_timeout == 300.0 and not rot.options.prune
    assert cfg.job(rot.key) is rot and rot in cfg.scheduled
    assert cfg.summary(T0)["encryptionRotation"] == [
        {"name": "encryption-rotation", "kind": "rotate", "origin": rot.origin, "enabled": True,
         "schedule": "0 3 * * 0", "timeZone": "UTC", "jitter": 0.0, "catchUp": False,
         "next": "2024-05-05T03:00:00+00:00", "config": "/etc/kubernetes/enc.yaml", "prune": False, "backups": []}]
    assert config(tmp_path, "").rotations == ()

    full = ("encryptionRotation:\n  config: /e.yaml\n  schedule: '30 2 * * 6'\n  timeZone: Europe/Berlin\n"
            "  apiserverConfigs: [/m1/e.yaml, /m2/e.yaml]\n  apiserverMetrics: ['https://10.0.0.1:6443/metrics']\n"
            "  rolloutTimeout: 10m\n  backups: [etcd-backup-pvc]\n  prune: true\n")
    (rot,) = config(tmp_path, full).rotations
    assert rot.options.rollout_timeout == 600.0 and rot.options.backups == ["etcd-backup-pvc"]

    assert "pruneKeys" in problems(tmp_path, "encryptionRotation:\n  config: /e.yaml\n  pruneKeys: true\n")
    assert "config" in problems(tmp_path, "encryptionRotation:\n  schedule: '@weekly'\n")
    assert "prune needs backups" in problems(tmp_path, "encryptionRotation:\n  config: /e.yaml\n  prune: true\n")
    msg = problems(tmp_path, "encryptionRotation:\n  config: /e.yaml\n  prune: true\n  backups: [nope]\n")
    assert "unknown repository 'nope'" in msg
    assert "must start with http" in problems(
        tmp_path, "encryptionRotation:\n  config: /e.yaml\n  apiserverMetrics: [ftp://x/metrics]\n")
    assert "day of week" in problems(tmp_path, "encryptionRotation:\n  config: /e.yaml\n  schedule: '0 3 * * 9'\n")


@dataclass
class RotatingRunner(ScriptedRunner):
    rotate_fail: bool = False

    async def rotate(self, job: RotationSpec) -> RotationOutcome:
        self.calls.append(f"rotate:{job.name}")
        if self.rotate_fail:
            raise EtcdwardenError("apiserver http://10.0.0.1/metrics did not load the configuration")
        return RotationOutcome(ok=True, new_key=f"key{len(self.calls) + 1}", rewritten=12)


async def run_due(ex: JobExecutor, store: MemoryStateStore, now: dt.datetime) -> list[str]:
    results: list[str] = []
    await ex.adopt(now, await store.load())
    while due := ex.due_jobs(now, await store.load()):
        job, d = due[0]
        rec = await ex.run(job, d, await store.load())
        results.append(f"{rec.name}:{rec.result}")
    return results


@pytest.mark.unit
@arun
async def test_weekly_rotation_with_a_fake_clock(tmp_path: Path) -> None:
    cfg = config(tmp_path, "encryptionRotation:\n  config: /e.yaml\n")
    clock = FakeClock(T0)
    runner = RotatingRunner()
    store = MemoryStateStore()
    ex = JobExecutor(cfg, runner, store, "agent-a", clock)
    assert await run_due(ex, store, clock()) == []  # no run recorded: it waits for its first slot
    clock.now = dt.datetime(2024, 5, 5, 2, 59, tzinfo=UTC)  # Sunday, before 03:00
    assert await run_due(ex, store, clock()) == []
    assert ex.next_wakeup(clock(), await store.load()) == dt.datetime(2024, 5, 5, 3, 0, tzinfo=UTC)
    clock.now = dt.datetime(2024, 5, 5, 3, 0, 5, tzinfo=UTC)
    assert await run_due(ex, store, clock()) == ["encryption-rotation:success"]
    st = (await store.load())["rotate/encryption-rotation"]
    assert st.details == {"newKey": "key2", "rewritten": 12, "pruned": None}
    clock.now = dt.datetime(2024, 5, 5, 3, 0, 6, tzinfo=UTC)
    assert await run_due(ex, store, clock()) == []
    clock.now = dt.datetime(2024, 5, 9, 3, 0, tzinfo=UTC)  # Thursday: nothing
    assert await run_due(ex, store, clock()) == []
    runner.rotate_fail = True  # a failure counts as a run: no retry storm, the next slot tries again
    clock.now = dt.datetime(2024, 5, 12, 3, 1, tzinfo=UTC)
    assert await run_due(ex, store, clock()) == ["encryption-rotation:failure"]
    st = (await store.load())["rotate/encryption-rotation"]
    assert st.last_result == FAILURE and "did not load" in (st.last_error or "") and st.successes == 1
    assert await run_due(ex, store, clock()) == []
    assert runner.calls == ["rotate:encryption-rotation"] * 2

    # a runner that cannot rotate: the run fails and says so
    store2 = MemoryStateStore()
    clock2 = FakeClock(T0)
    ex2 = JobExecutor(cfg, ScriptedRunner(), store2, "agent-a", clock2)
    assert await run_due(ex2, store2, T0) == []
    clock2.now = dt.datetime(2024, 5, 5, 3, 0, 5, tzinfo=UTC)
    assert await run_due(ex2, store2, clock2()) == ["encryption-rotation:failure"]
    assert "cannot rotate" in ((await store2.load())["rotate/encryption-rotation"].last_error or "")


def test_default_runner_rotates_against_etcd(etcd1: LocalCluster, tmp_path: Path) -> None:
    enc = tmp_path / "enc.yaml"
    ep = ",".join(etcd1.endpoints)

    async def prep() -> None:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            await seed(c, n=2)

    asyncio.run(prep())
    common = ["--endpoints", ep, "--config", str(enc), "--resources", "secrets,configmaps"]
    r = cli("encryption", "enable", *common)
    assert r.code == 0, r.err
    repo = tmp_path / "repo"
    r = cli("-w", "json", "backup", str(repo), "--endpoints", ep, "--encryption-config", str(enc))
    assert r.code == 0, r.err
    backup_id = json.loads(r.out)["timestamp"]
    apiserver = tmp_path / "master" / "enc.yaml"
    apiserver.parent.mkdir()
    apiserver.write_bytes(enc.read_bytes())

    with apiservers(apiserver) as (fake,):
        section = (f"encryptionRotation:\n  config: {enc}\n  resources: [secrets, configmaps]\n"
                   f"  apiserverConfigs: [{apiserver}]\n  apiserverMetrics: ['{fake.url}']\n  rolloutTimeout: 30s\n"
                   "  backups: [etcd-backup-pvc]\n  prune: true\n")
        cfg = config(tmp_path, section, endpoints=etcd1.endpoints)
        (job,) = cfg.rotations

        async def go() -> RotationOutcome:
            async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
                return await DefaultRunner(c, cfg).rotate(job)

        out = asyncio.run(go())
        assert len(fake.history) == 3  # start-up, read-only phase, promoted phase
    assert out.ok and out.new_key == "key2" and out.rewritten > 0 and out.pruned is None, out
    assert any(f"kept aescbc/key1: backup file://{repo} {backup_id}" in n for n in out.notes), out.notes
    keys = [k.name for k in EncryptionConfiguration.load(enc).resources[0].providers[0].keys]
    assert keys == ["key2", "key1"] and apiserver.read_bytes() == enc.read_bytes()
    r = cli("-w", "json", "encryption", "status", *common)
    assert all(set(x["by_provider"]) == {"aescbc/key2"} for x in json.loads(r.out)["resources"])

    # the same job through the executor (no metrics this time): state recorded, key2 pruned, key1 kept
    section = (f"encryptionRotation:\n  config: {enc}\n  resources: [secrets, configmaps]\n"
               f"  apiserverConfigs: [{apiserver}]\n  backups: [etcd-backup-pvc]\n  prune: true\n")
    cfg2 = config(tmp_path, section, endpoints=etcd1.endpoints)

    async def via_executor() -> tuple[str, dict[str, object]]:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            store = MemoryStateStore()
            ex = JobExecutor(cfg2, DefaultRunner(c, cfg2), store, "agent-a")
            (job2,) = cfg2.rotations
            due = Due(slot=dt.datetime.now(UTC), start_at=dt.datetime.now(UTC))  # as its slot would
            rec = await ex.run(job2, due, await store.load())
            return rec.result, (await store.load())[job2.key].details

    result, details = asyncio.run(via_executor())
    assert result == SUCCESS and details["newKey"] == "key3", details
    assert "aescbc/key2" in str(details["pruned"]) and "key1" not in str(details["pruned"])
    keys = [k.name for k in EncryptionConfiguration.load(enc).resources[0].providers[0].keys]
    assert keys == ["key3", "key1"] and apiserver.read_bytes() == enc.read_bytes()


def test_rotation_of_values_that_are_not_kubernetes_objects_needs_the_config_key(etcd1: LocalCluster,
                                                                                 tmp_path: Path) -> None:
    """The CLI's --force=non-kubernetes has a daemon equivalent: without it the weekly rotation could never run."""
    enc = tmp_path / "enc.yaml"
    ep = ",".join(etcd1.endpoints)

    async def prep() -> None:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            await seed(c, n=1)
            await c.put(b"/registry/secrets/default/raw", b"hello, etcd")

    asyncio.run(prep())
    r = cli("encryption", "enable", "--endpoints", ep, "--config", str(enc), "--resources", "secrets",
            "--force=non-kubernetes")
    assert r.code == 0, r.err
    before = enc.read_bytes()

    def rotate(extra: str) -> RotationOutcome:
        cfg = config(tmp_path, f"encryptionRotation:\n  config: {enc}\n  resources: [secrets]\n{extra}",
                     endpoints=etcd1.endpoints)
        (job,) = cfg.rotations

        async def go() -> RotationOutcome:
            async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
                return await DefaultRunner(c, cfg).rotate(job)

        return asyncio.run(go())

    with pytest.raises(EtcdwardenError) as ei:
        rotate("")
    msg = str(ei.value)
    assert "not Kubernetes objects" in msg and "encryptionRotation.allowNonKubernetes: true" in msg, msg
    assert "--force" not in msg.rsplit("(set ", maxsplit=1)[-1] and ei.value.exit_code == 3
    assert enc.read_bytes() == before  # nothing written
    out = rotate("  allowNonKubernetes: true\n")
    assert out.ok and out.new_key == "key2", out
    keys = [k.name for k in EncryptionConfiguration.load(enc).resources[0].providers[0].keys]
    assert keys == ["key2", "key1"]
