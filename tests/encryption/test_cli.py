"""``etcdwarden encryption ...`` end to end, including a migration killed halfway and resumed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from tests.cli_helpers import cli
from tests.encryption.k8sdata import json_object, protobuf_object, seed, snapshot


def _ep(cluster: LocalCluster) -> str:
    return ",".join(cluster.endpoints)


def test_cli_enable_status_get_rotate_disable(etcd1: LocalCluster, tmp_path: Path) -> None:
    cfg = tmp_path / "enc.yaml"
    ep = _ep(etcd1)

    async def prep() -> dict[bytes, bytes]:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            return (await seed(c, n=3)).values

    values = asyncio.run(prep())
    common = ["--endpoints", ep, "--config", str(cfg), "--resources", "secrets,configmaps"]

    r = cli("encryption", "enable", *common, "--dry-run")
    assert r.code == 0, r.err
    assert "WOULD REWRITE" in r.out and not cfg.exists()

    r = cli("-w", "json", "encryption", "enable", *common, "--type", "aesgcm")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["new_key"] == "key1" and res["migration"]["complete"]
    assert sum(x["rewritten"] for x in res["migration"]["resources"]) == 12
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    secret = EncryptionConfiguration.load(cfg).resources[0].providers[0].keys[0].to_obj()["secret"]
    assert secret not in r.out + r.err

    r = cli("encryption", "status", *common)
    assert r.code == 0, r.err
    assert "Encrypted=True reason=EncryptionCompleted: All resources encrypted: secrets, configmaps" in r.out
    assert "aesgcm/key1=6" in r.out

    key = "/kubernetes.io/secrets/ns1/s1"
    r = cli("-w", "json", "encryption", "get", key, *common, "--decrypt")
    assert r.code == 0, r.err
    got = json.loads(r.out)
    assert got["stored_as"] == "aesgcm/key1" and got["decrypted"]
    assert base64.b64decode(got["value_base64"]) == values[key.encode()]
    r = cli("encryption", "get", "/registry/configmaps/ns0/c0", *common, "--decrypt")
    assert r.code == 0 and json.loads(r.out.splitlines()[1]) == json.loads(values[b"/registry/configmaps/ns0/c0"])
    r = cli("encryption", "get", "/registry/configmaps/ns0/c0", *common)
    assert "stored as aesgcm/key1" in r.err and "k8s:enc:aesgcm:v1:key1:" in r.out

    r = cli("encryption", "rotate", *common, "--prune")
    assert r.code == 3 and "--backups" in r.err and "--no-backups" in r.err  # backups might need the old key
    r = cli("encryption", "rotate", *common, "--prune", "--no-backups")
    assert r.code == 0, r.err
    assert "pruned: remove unused keys: aesgcm/key1" in r.err
    r = cli("-w", "json", "encryption", "status", *common)
    st = json.loads(r.out)
    assert st["conditions"][0]["reason"] == "EncryptionCompleted"
    assert all(x["by_provider"] == {"aesgcm/key2": 6} for x in st["resources"])

    r = cli("encryption", "disable", *common)
    assert r.code == 0, r.err
    assert "--prune" in r.err  # says the old key is kept
    r = cli("encryption", "status", *common)
    assert "DecryptionCompleted: Encryption mode set to identity and everything is decrypted" in r.out


def test_cli_malformed_config_and_usage_errors(etcd1: LocalCluster, tmp_path: Path) -> None:
    cfg = tmp_path / "enc.yaml"
    cfg.write_text("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
                   "- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: k1, secret: 'c2hvcnQ='}]}\n")
    r = cli("encryption", "migrate", "--endpoints", _ep(etcd1), "--config", str(cfg))
    assert r.code == 2
    assert "resources[0].providers[0].aescbc.keys[0].secret" in r.err and "got 5" in r.err
    assert "c2hvcnQ=" not in r.err
    r = cli("encryption", "rotate", "--endpoints", _ep(etcd1), "--config", str(tmp_path / "none.yaml"))
    assert r.code == 2 and "encryption enable" in r.err
    r = cli("encryption", "status", "--endpoints", _ep(etcd1), "--config", str(cfg), "--resources", "pods")
    assert r.code == 2 and "unknown resource 'pods'" in r.err
    r = cli("encryption", "get", "/registry/pods/x", "--endpoints", _ep(etcd1), "--config",
            str(tmp_path / "none.yaml"), "--decrypt")
    assert r.code == 2 and "--resource" in r.err


def test_cli_custom_resource_prefix(etcd1: LocalCluster, tmp_path: Path) -> None:
    cfg = tmp_path / "enc.yaml"

    async def prep() -> None:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            await c.put(b"/registry/example.com/widgets/ns/w1", json_object("example.com/v1", "Widget", "ns", "w1", {}))

    asyncio.run(prep())
    common = ["--endpoints", _ep(etcd1), "--config", str(cfg), "--resources", "widgets.example.com",
              "--resource", "widgets.example.com=/registry/example.com/widgets/"]
    r = cli("encryption", "enable", *common, "--type", "secretbox")
    assert r.code == 0, r.err
    r = cli("encryption", "status", *common)
    assert "All resources encrypted: widgets.example.com" in r.out


def test_migration_killed_halfway_resumes(etcd1: LocalCluster, tmp_path: Path) -> None:
    cfg = tmp_path / "enc.yaml"
    state = tmp_path / "enc.yaml.migration-state.json"
    n = 3000
    keys = [f"/registry/secrets/ns/s{i:05d}".encode() for i in range(n)]
    originals = {k: protobuf_object("v1", "Secret", "ns", k.decode(), {"p": b"v" * 200}) for k in keys}

    async def prep() -> None:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            for k in keys:
                await c.put(k, originals[k])

    asyncio.run(prep())
    common = ["--endpoints", _ep(etcd1), "--config", str(cfg), "--resources", "secrets", "--layout", "kubernetes"]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from etcdwarden.cli.main import main; main()", "encryption", "enable", *common,
         "--rate-limit", "1000", "--page-size", "100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if state.exists() and json.loads(state.read_text()).get("cursors"):
                break
            time.sleep(0.05)
        time.sleep(0.3)
        assert proc.poll() is None, "the migration finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    async def count_encrypted() -> int:
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            snap = await snapshot(c)
        return sum(kv.value.startswith(b"k8s:enc:aescbc:v1:key1:") for kv in snap.values())

    halfway = asyncio.run(count_encrypted())
    assert 0 < halfway < n
    r = cli("-w", "json", "encryption", "migrate", *common)
    assert r.code == 0, r.err
    rep = json.loads(r.out)["migration"]
    assert rep["complete"] and rep["resumed"]
    counts = rep["resources"][0]
    assert counts["rewritten"] == n - halfway
    assert asyncio.run(count_encrypted()) == n
    assert json.loads(state.read_text())["complete"] is True

    async def check() -> None:
        cfgobj = EncryptionConfiguration.load(cfg)
        t = cfgobj.transformer_for("secrets")
        async with EtcdClient(ClientConfig.from_strings(etcd1.endpoints)) as c:
            snap = await snapshot(c)
        for k in keys:
            assert t.read(snap[k].value, k).plaintext == originals[k]

    asyncio.run(check())
    # idempotent: running again rewrites nothing
    r = cli("-w", "json", "encryption", "migrate", *common)
    assert r.code == 0 and json.loads(r.out)["migration"]["resources"][0]["rewritten"] == 0
