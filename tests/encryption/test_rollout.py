"""``encryption rotate`` rollout to apiservers (config files + config-hash metric) and backup-aware pruning."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from etcdwarden.encryption.config import EncryptionConfiguration, config_hash
from etcdwarden.encryption.errors import EncryptionConfigError
from etcdwarden.encryption.rollout import loaded_hashes
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from tests.cli_helpers import cli
from tests.encryption.k8sdata import seed

METRIC = "apiserver_encryption_config_controller_last_config_info"


class FakeApiserver:
    """Serves /metrics like a kube-apiserver with automatic reload: the hash of the last valid config it
    read from ``path`` (re-read on every scrape; an invalid or missing file keeps the previous one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loaded: bytes | None = None
        self.history: list[bytes] = []  # every distinct configuration it loaded, in order
        self.scrapes = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.scrapes += 1
                body = fake.exposition().encode() if self.path == "/metrics" else b"not found\n"
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    def reload(self) -> None:
        try:
            data = self.path.read_bytes()
            EncryptionConfiguration.parse(data)
        except (OSError, EncryptionConfigError):
            return
        if data != self.loaded:
            self.loaded = data
            self.history.append(data)

    def exposition(self) -> str:
        self.reload()
        lines = ["# HELP apiserver_storage_objects Number of stored objects", "apiserver_storage_objects 12"]
        if self.loaded is not None:
            lines += [f"# TYPE {METRIC} gauge",
                      f'{METRIC}{{apiserver_id_hash="sha256:0123",hash="{config_hash(self.loaded)}"}} 1']
        return "\n".join(lines) + "\n"


@contextmanager
def apiservers(*paths: Path) -> Iterator[list[FakeApiserver]]:
    fakes = [FakeApiserver(p) for p in paths]
    for f in fakes:
        f.reload()  # loaded at start-up
        f.thread.start()
    try:
        yield fakes
    finally:
        for f in fakes:
            f.server.shutdown()
            f.server.server_close()


def _common(etcd: LocalCluster, cfg: Path) -> list[str]:
    return ["--endpoints", ",".join(etcd.endpoints), "--config", str(cfg), "--resources", "secrets,configmaps"]


def _seed(etcd: LocalCluster) -> None:
    async def go() -> None:
        async with EtcdClient(ClientConfig.from_strings(etcd.endpoints)) as c:
            await seed(c, n=3)

    asyncio.run(go())


def _by_provider(etcd: LocalCluster, cfg: Path) -> list[dict[str, int]]:
    r = cli("-w", "json", "encryption", "status", *_common(etcd, cfg))
    assert r.code == 0, r.err
    return [x["by_provider"] for x in json.loads(r.out)["resources"]]


def _first_keys(data: bytes) -> list[str]:
    return [k.name for k in EncryptionConfiguration.parse(data).resources[0].providers[0].keys]


@pytest.mark.unit
def test_loaded_hashes_parses_the_exposition_format() -> None:
    text = (f"# TYPE {METRIC} gauge\n"
            f'{METRIC}{{apiserver_id_hash="sha256:aa",hash="sha256:bb"}} 1\n'
            f'{METRIC}_other{{hash="sha256:cc"}} 1\n'
            'apiserver_encryption_config_controller_automatic_reload_last_config_info{hash="sha256:dd"} 1 1700\n'
            f"{METRIC} 1\n")
    assert loaded_hashes(text) == ["sha256:bb", "sha256:dd"]
    assert loaded_hashes("") == []


def test_rotate_rolls_out_every_phase_and_waits_for_each_apiserver(etcd1: LocalCluster, tmp_path: Path) -> None:
    cfg = tmp_path / "enc.yaml"
    _seed(etcd1)
    r = cli("encryption", "enable", *_common(etcd1, cfg), "--type", "aesgcm")
    assert r.code == 0, r.err
    a1, a2 = tmp_path / "master-1" / "enc.yaml", tmp_path / "master-2" / "enc.yaml"
    for a in (a1, a2):
        a.parent.mkdir()
        a.write_bytes(cfg.read_bytes())
    with apiservers(a1, a2) as fakes:
        r = cli("encryption", "rotate", *_common(etcd1, cfg), "--apiserver-config", str(a1),
                "--apiserver-config", str(a2), "--apiserver-metrics", fakes[0].url,
                "--apiserver-metrics", fakes[1].url, "--rollout-timeout", "30s")
        assert r.code == 0, r.err
        for a in (a1, a2):
            assert a.read_bytes() == cfg.read_bytes()
            assert stat.S_IMODE(a.stat().st_mode) == 0o600
        # each apiserver loaded the read-only phase, then the promoted one, before the migration
        for f in fakes:
            assert [_first_keys(h) for h in f.history] == [["key1"], ["key1", "key2"], ["key2", "key1"]]
        assert r.err.count("loaded sha256:") == 4
        secret = EncryptionConfiguration.load(cfg).resources[0].providers[0].keys[0].to_obj()["secret"]
        assert secret not in r.out + r.err
    assert all(bp == {"aesgcm/key2": 6} for bp in _by_provider(etcd1, cfg))


def test_rotate_stops_when_an_apiserver_does_not_load_the_phase(etcd1: LocalCluster, tmp_path: Path) -> None:
    cfg = tmp_path / "enc.yaml"
    _seed(etcd1)
    r = cli("encryption", "enable", *_common(etcd1, cfg), "--type", "aescbc")
    assert r.code == 0, r.err
    deployed, stale = tmp_path / "a1.yaml", tmp_path / "a2.yaml"
    before = cfg.read_bytes()
    deployed.write_bytes(before)
    stale.write_bytes(before)  # this apiserver reads a file etcdwarden is not told about
    with apiservers(deployed, stale) as (good, lagging):
        r = cli("encryption", "rotate", *_common(etcd1, cfg), "--apiserver-config", str(deployed),
                "--apiserver-metrics", good.url, "--apiserver-metrics", lagging.url, "--rollout-timeout", "1.5s")
        assert r.code == 1
        assert f"apiserver {lagging.url}" in r.err and "add-key" in r.err and "nothing was migrated" in r.err
        assert f"apiserver {good.url}:" not in r.err
        assert lagging.scrapes >= 2 and len(lagging.history) == 1
        assert "the previous configuration was put back" in r.err
    # the failed read-only phase was taken back everywhere it was written, nothing was rewritten
    assert cfg.read_bytes() == before and deployed.read_bytes() == before
    assert all(bp == {"aescbc/key1": 6} for bp in _by_provider(etcd1, cfg))
    # an unreachable apiserver is named too
    r = cli("encryption", "rotate", *_common(etcd1, cfg), "--apiserver-metrics", "http://127.0.0.1:9/metrics",
            "--rollout-timeout", "1s")
    assert r.code == 1 and "apiserver http://127.0.0.1:9/metrics: its metrics could not be read" in r.err


def test_prune_keeps_keys_that_kept_backups_need(etcd1: LocalCluster, tmp_path: Path) -> None:
    cfg = tmp_path / "enc.yaml"
    _seed(etcd1)
    common = _common(etcd1, cfg)
    r = cli("encryption", "enable", *common, "--type", "aesgcm")
    assert r.code == 0, r.err
    repo = tmp_path / "repo"
    r = cli("-w", "json", "backup", str(repo), "--endpoints", etcd1.endpoints[0], "--encryption-config", str(cfg))
    assert r.code == 0, r.err
    backup_id = json.loads(r.out)["timestamp"]
    assert json.loads(r.out)["encryption_at_rest"]["key_names"] == ["key1"]

    # a repository that is not there is an error before anything changes
    before = cfg.read_bytes()
    r = cli("encryption", "rotate", *common, "--prune", "--backups", str(tmp_path / "no-such-repo"))
    assert r.code == 2 and "holds no backups" in r.err
    assert cfg.read_bytes() == before

    r = cli("encryption", "rotate", *common, "--prune", "--backups", str(repo))
    assert r.code == 0, r.err
    assert f"kept aesgcm/key1: backup file://{repo} {backup_id} still needs it" in r.err
    assert "pruned:" not in r.err
    keys = {k.name for k in EncryptionConfiguration.load(cfg).resources[0].providers[0].keys}
    assert keys == {"key1", "key2"}
    assert all(bp == {"aesgcm/key2": 6} for bp in _by_provider(etcd1, cfg))

    # the backup is no longer kept (its snapshot is gone: incomplete): its keys may go
    for snap in repo.glob(f"snapshot_{backup_id}.db*"):
        snap.unlink()
    r = cli("encryption", "rotate", *common, "--prune", "--backups", str(repo))
    assert r.code == 0, r.err
    assert "pruned: remove unused keys: aesgcm/key2" in r.err and "aesgcm/key1" in r.err
    assert [k.name for k in EncryptionConfiguration.load(cfg).resources[0].providers[0].keys] == ["key3"]
    assert all(bp == {"aesgcm/key3": 6} for bp in _by_provider(etcd1, cfg))
