"""Migration against real etcd: enable → rotate → disable, leases, wrong keys, concurrency, dry run."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.encryption.migrate import MigrationError, Migrator
from etcdwarden.encryption.ops import Options, run_operation
from etcdwarden.encryption.plan import plan_enable
from etcdwarden.encryption.providers import classify
from etcdwarden.encryption.resources import select
from etcdwarden.encryption.status import collect
from etcdwarden.encryption.transformer import ResourceTransformer
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.api.mvccpb.kv_pb2 import KeyValue
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from tests.encryption.k8sdata import Seeded, json_object, seed, snapshot

T = TypeVar("T")
ALL = select()


def run(cluster: LocalCluster, fn: Callable[[EtcdClient], Awaitable[T]]) -> T:
    async def go() -> T:
        async with EtcdClient(ClientConfig.from_strings(cluster.endpoints)) as c:
            return await fn(c)

    return asyncio.run(go())


def _assert_untouched(before: dict[bytes, KeyValue], after: dict[bytes, KeyValue], s: Seeded) -> None:
    for k in s.values.keys() - s.selected:
        assert after[k].value == before[k].value and after[k].mod_revision == before[k].mod_revision


def _plain(cfg: EncryptionConfiguration, kv: KeyValue) -> bytes:
    r = next(r for r in ALL if r.owns(kv.key))
    return cfg.transformer_for(r.name).read(kv.value, kv.key).plaintext


def test_enable_rotate_disable_cycle(etcd1: LocalCluster, tmp_path: Path) -> None:
    cfg_path = tmp_path / "enc.yaml"

    async def go(c: EtcdClient) -> None:
        s = await seed(c, n=6)
        before = await snapshot(c)
        # enable
        res = await run_operation(c, "enable", cfg_path, ALL, Options())
        assert res.migration is not None and res.migration.complete and res.new_key == "key1"
        assert res.migration.rewritten == len(s.selected)
        assert [p.split(":")[0] for p in res.phases] == ["add-key", "promote"]
        cfg = EncryptionConfiguration.load(cfg_path)
        after = await snapshot(c)
        for k in s.selected:
            assert after[k].value.startswith(b"k8s:enc:aescbc:v1:key1:"), k
            assert _plain(cfg, after[k]) == s.values[k]
        _assert_untouched(before, after, s)
        # leases preserved and still counting
        for k, lease in s.leased.items():
            assert after[k].lease == lease
        ttl = await c.lease_ttl(next(iter(s.leased.values())))
        assert 0 < ttl.TTL <= 600
        st = await collect(c, cfg, ALL)
        assert st.condition.reason == "EncryptionCompleted"
        assert st.condition.message == ("All resources encrypted: secrets, configmaps, routes.route.openshift.io, "
                                        "oauthaccesstokens.oauth.openshift.io, oauthauthorizetokens.oauth.openshift.io")
        assert st.resources[0].by_label == {"aescbc/key1": 12}
        # enabling again is idempotent: nothing to rewrite
        again = await run_operation(c, "enable", cfg_path, ALL, Options())
        assert again.phases == [] and again.migration is not None and again.migration.rewritten == 0
        # rotate with prune
        res = await run_operation(c, "rotate", cfg_path, ALL, Options(prune=True))
        assert res.new_key == "key2" and res.pruned and "aescbc/key1" in res.pruned
        cfg = EncryptionConfiguration.load(cfg_path)
        assert "key1" not in cfg.key_names()
        after = await snapshot(c)
        for k in s.selected:
            assert after[k].value.startswith(b"k8s:enc:aescbc:v1:key2:")
            assert _plain(cfg, after[k]) == s.values[k]
            if k in s.leased:
                assert after[k].lease == s.leased[k]
        # disable: byte-identical plaintext again
        res = await run_operation(c, "disable", cfg_path, ALL, Options())
        assert res.migration is not None and res.migration.complete
        assert any("--prune" in n for n in res.notes)
        after = await snapshot(c)
        for k in s.values:
            assert after[k].value == s.values[k]
        _assert_untouched(before, after, s)
        cfg = EncryptionConfiguration.load(cfg_path)
        st = await collect(c, cfg, ALL)
        assert st.condition.reason == "DecryptionCompleted"
        assert st.condition.message == "Encryption mode set to identity and everything is decrypted"
        assert "key2" in cfg.key_names()  # kept for backups

    run(etcd1, go)


@pytest.mark.parametrize("ptype", ["aesgcm", "secretbox"])
def test_enable_other_types_and_layout_selection(etcd1: LocalCluster, tmp_path: Path, ptype: str) -> None:
    cfg_path = tmp_path / "enc.yaml"
    only = select(["secrets", "configmaps"], ["openshift"])

    async def go(c: EtcdClient) -> None:
        s = await seed(c, n=3)
        before = await snapshot(c)
        res = await run_operation(c, "enable", cfg_path, only, Options(page_size=2, batch_ops=2), ptype=ptype)
        assert res.migration is not None and res.migration.rewritten == 6
        after = await snapshot(c)
        cfg = EncryptionConfiguration.load(cfg_path)
        for k, kv in after.items():
            if k.startswith((b"/kubernetes.io/secrets/", b"/kubernetes.io/configmaps/")):
                assert classify(kv.value).label == f"{ptype}/key1"
                assert _plain(cfg, kv) == s.values[k]
            else:
                assert kv.value == before[k].value
        st = await collect(c, cfg, only)
        assert st.condition.message == "All resources encrypted: secrets, configmaps"

    run(etcd1, go)


def test_dry_run_changes_nothing(etcd1: LocalCluster, tmp_path: Path) -> None:
    cfg_path = tmp_path / "enc.yaml"

    async def go(c: EtcdClient) -> None:
        s = await seed(c, n=2)
        before = await snapshot(c)
        res = await run_operation(c, "enable", cfg_path, ALL, Options(dry_run=True))
        assert res.migration is not None and res.migration.rewritten == len(s.selected)
        assert not cfg_path.exists() and not list(tmp_path.glob("*.json"))
        after = await snapshot(c)
        assert {k: v.mod_revision for k, v in after.items()} == {k: v.mod_revision for k, v in before.items()}

    run(etcd1, go)


@pytest.mark.parametrize("ptype", ["aescbc", "aesgcm"])
def test_wrong_key_is_a_clear_error_and_nothing_is_rewritten(etcd1: LocalCluster, tmp_path: Path,
                                                             ptype: str) -> None:
    cfg_path = tmp_path / "enc.yaml"

    async def go(c: EtcdClient) -> None:
        await seed(c, n=4)
        await run_operation(c, "enable", cfg_path, ALL, Options(), ptype=ptype)
        # same key name, different secret
        cfg = EncryptionConfiguration.load(cfg_path)
        wrong = bytes(32)
        for rc in cfg.resources:
            for p in rc.providers:
                for k in p.keys:
                    k.secret = wrong
        cfg.save(cfg_path)
        before = await snapshot(c)
        with pytest.raises(MigrationError) as ei:
            await run_operation(c, "rotate", cfg_path, ALL, Options())
        msg = str(ei.value)
        assert "key1" in msg and "/registry/secrets/" in msg and "nothing was written and no file was changed" in msg
        assert base64.b64encode(wrong).decode() not in msg
        after = await snapshot(c)
        assert {k: v.mod_revision for k, v in after.items()} == {k: v.mod_revision for k, v in before.items()}

    run(etcd1, go)


def test_unreadable_values_can_be_skipped_and_are_reported(etcd1: LocalCluster, tmp_path: Path) -> None:
    cfg_path = tmp_path / "enc.yaml"
    res_sel = select(["secrets"], ["kubernetes"])

    async def go(c: EtcdClient) -> None:
        await c.put(b"/registry/secrets/a/ok", b"k8s\x00fine")
        kms = b"k8s:enc:kms:v2:mykms:" + bytes.fromhex("0a02aaaa1202696412026b6b")
        await c.put(b"/registry/secrets/a/kms", kms)
        with pytest.raises(MigrationError, match="KMS"):
            await run_operation(c, "enable", cfg_path, res_sel, Options())
        assert not cfg_path.exists()  # found before anything was written
        res = await run_operation(c, "enable", cfg_path, res_sel, Options(skip_unreadable=True))
        assert res.migration is not None and not res.migration.complete
        # the state file must not say "complete" either: a backup would then not be refused
        from etcdwarden.encryption.ops import default_state_path
        from etcdwarden.encryption.state import migration_in_progress

        assert migration_in_progress(default_state_path(cfg_path))
        counts = res.migration.resources["secrets"]
        assert counts.unreadable == 1 and counts.rewritten == 1
        assert (await c.get(b"/registry/secrets/a/kms")).kvs[0].value == kms

    run(etcd1, go)


class _Racing(Migrator):
    """Before each full batch is first written, another writer updates the batch's first key."""

    def __init__(self, *a: Any, writer: Callable[[bytes], Awaitable[None]], **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.writer = writer
        self.raced: set[bytes] = set()

    async def _txn(self, items: Any, t: Any, counts: Any) -> Any:
        k = items[0].key
        if len(items) == self.batch_ops and k not in self.raced:
            self.raced.add(k)
            await self.writer(k)
        return await super()._txn(items, t, counts)


def test_concurrent_write_wins_deterministic(etcd1: LocalCluster) -> None:
    res_sel = select(["configmaps"], ["kubernetes"])

    async def go(c: EtcdClient) -> None:
        for i in range(40):
            await c.put(f"/registry/configmaps/ns/c{i:02d}".encode(), json_object("v1", "ConfigMap", "ns", f"c{i}", {}))
        phases, _ = plan_enable(None, ["configmaps"], "aesgcm")
        cfg = phases[-1].config
        t: ResourceTransformer = cfg.transformer_for("configmaps")
        final: dict[bytes, bytes] = {}

        async def writer(key: bytes) -> None:
            new = b'{"updated":"' + key + b'"}'
            # half the racing writes are by an up-to-date apiserver, half by a lagging one (plaintext)
            stored = t.write(new, key) if int(key[-2:]) // 8 % 2 else new
            await c.put(key, stored)
            final[key] = new

        m = _Racing(c, cfg, res_sel, batch_ops=8, writer=writer)
        rep = await m.run()
        counts = rep.resources["configmaps"]
        assert rep.complete and counts.conflicts == len(m.raced) == 5
        assert counts.raced_current >= 1
        snap = await snapshot(c)
        for k, kv in snap.items():
            assert t.is_current(kv.value)
            plain = t.read(kv.value, k).plaintext
            assert plain == final.get(k, json_object("v1", "ConfigMap", "ns", f"c{int(k[-2:])}", {}))

    run(etcd1, go)


def test_concurrent_writer_loses_no_update(etcd3: LocalCluster, tmp_path: Path) -> None:
    """A writer doing CAS updates (as kube-apiserver) while the migration runs on a 3-member cluster."""
    res_sel = select(["secrets"], ["kubernetes"])
    cfg = plan_enable(None, ["secrets"], "aescbc")[0][-1].config
    t = cfg.transformer_for("secrets")
    keys = [f"/registry/secrets/ns/s{i:04d}".encode() for i in range(1500)]

    async def go(c: EtcdClient) -> None:
        for k in keys:
            await c.put(k, json_object("v1", "Secret", "ns", k.decode(), {"n": "0"}))
        last: dict[bytes, bytes] = {}
        stop = asyncio.Event()

        async def writer() -> int:
            n = 0
            async with EtcdClient(ClientConfig.from_strings(etcd3.endpoints)) as w:
                i = 0
                while not stop.is_set():
                    k = keys[(i * 7919) % len(keys)]
                    i += 1
                    kv = (await w.get(k)).kvs[0]
                    plain = t.read(kv.value, k).plaintext
                    new = plain.replace(b'"n":"', b'"n":"1', 1)
                    txn = pb.TxnRequest(
                        compare=[pb.Compare(key=k, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                                            mod_revision=kv.mod_revision)],
                        success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=t.write(new, k)))])
                    if (await w.txn(txn)).succeeded:
                        last[k] = new
                        n += 1
            return n

        wtask = asyncio.create_task(writer())
        rep = await Migrator(c, cfg, res_sel, page_size=100, batch_ops=20, concurrency=4, rate_limit=1500).run()
        stop.set()
        writes = await wtask
        assert rep.complete and writes > 50
        snap = await snapshot(c)
        for k in keys:
            assert t.is_current(snap[k].value)
            expected = last.get(k, json_object("v1", "Secret", "ns", k.decode(), {"n": "0"}))
            assert t.read(snap[k].value, k).plaintext == expected

    run(etcd3, go)
