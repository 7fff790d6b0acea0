"""Rewrite every value of the selected resources with the current write provider.

The protocol is kube-apiserver's own (encryption.md §4): page through each resource prefix by key
(``Range(start, prefix_end, limit)``, next start = last key + ``\\0``; no pinned revision, so
compaction cannot break a long pass), decrypt with the resource's read path, re-encrypt the
*unchanged* bytes with provider 0 / key 0, and write with a Txn that compares ``mod_revision``
and puts with ``ignore_lease`` (the key keeps its lease, so OAuth tokens still expire). Several
keys go in one Txn (≤ ``batch_ops``, ≤ ``batch_bytes``); when it fails because someone wrote one of
them, the failure branch returns the fresh values: deleted keys are dropped, keys another writer
already stored in the target format are done, the others are re-derived from the fresh value and
retried, batched a few times and then one by one. A concurrent write therefore always wins.

Whole pages are decrypted before any of their values is written: a value that cannot be decrypted
(wrong key, unknown key, KMS) stops the migration before its page is touched, unless
``skip_unreadable`` is set, in which case it is counted, reported and left as it is.

Passes repeat until one finds nothing to rewrite (values written in the old format by a lagging
writer behind the cursor are caught by the next pass). Progress is checkpointed in a
:class:`~etcdwarden.encryption.state.MigrationState`; everything is idempotent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.encryption.errors import TransformError, etcd_key_text
from etcdwarden.encryption.plaintext import looks_like_kubernetes_object
from etcdwarden.encryption.resources import Resource
from etcdwarden.encryption.state import MigrationState
from etcdwarden.encryption.transformer import ResourceTransformer
from etcdwarden.errors import EtcdwardenError, UsageError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient, prefix_end

__all__ = ["MigrationError", "MigrationReport", "Migrator", "ResourceCounts", "looks_like_kubernetes_object"]


class MigrationError(EtcdwardenError):
    """The migration stopped (e.g. a value could not be decrypted); what was done stays done."""


@dataclass
class ResourceCounts:
    resource: str
    write: str
    scanned: int = 0
    current: int = 0  # already in the write format when read
    rewritten: int = 0  # rewritten by us (or, in a dry run, would be)
    conflicts: int = 0  # CAS failures: somebody wrote the key between our read and our write
    raced_current: int = 0  # ... and that write was already in the write format
    deleted: int = 0  # deleted before we could rewrite it
    unreadable: int = 0  # skipped: could not be decrypted (skip_unreadable)
    gave_up: int = 0  # kept conflicting; left for the next pass

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class MigrationReport:
    resources: dict[str, ResourceCounts]
    passes: int = 0
    complete: bool = False
    resumed: bool = False
    dry_run: bool = False
    elapsed: float = 0.0
    first_pass_elapsed: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def rewritten(self) -> int:
        return sum(c.rewritten for c in self.resources.values())

    def to_dict(self) -> dict[str, Any]:
        return {"complete": self.complete, "dry_run": self.dry_run, "passes": self.passes,
                "resumed": self.resumed, "elapsed_seconds": round(self.elapsed, 3),
                "resources": [c.to_dict() for c in self.resources.values()], "problems": self.problems}


@dataclass
class _Item:
    key: bytes
    mod_revision: int
    value: bytes  # the new stored value


@dataclass
class _Page:
    next_key: bytes | None  # None: last page of the prefix
    outstanding: int = 0


class Migrator:
    """One migration run over ``resources`` with the write providers of ``config``."""

    def __init__(self, client: EtcdClient, config: EncryptionConfiguration, resources: Sequence[Resource], *,
                 page_size: int = 1000, batch_ops: int = 128, batch_bytes: int = 1 << 20, concurrency: int = 8,
                 dry_run: bool = False, state: MigrationState | None = None, skip_unreadable: bool = False,
                 check_plaintext: bool = True, max_passes: int = 5, rate_limit: float | None = None,
                 progress: Callable[[ResourceCounts], None] | None = None) -> None:
        if not 1 <= batch_ops <= 128:
            raise UsageError("batch size must be between 1 and 128 (etcd's default --max-txn-ops)")
        self.client = client
        self.resources = list(resources)
        self.transformers = {r.name: config.transformer_for(r.name) for r in self.resources}
        for name, t in self.transformers.items():
            if not t.can_write:
                raise UsageError(f"resource {name}: the write provider is {t.write_label}; etcdwarden cannot "
                                 "write with a KMS provider")
        self.page_size = page_size
        self.batch_ops = batch_ops
        self.batch_bytes = batch_bytes
        self.concurrency = max(1, concurrency)
        self.dry_run = dry_run
        targets = {r.name: self.transformers[r.name].write_label for r in self.resources}
        self.state = state if state is not None else MigrationState(None, targets)
        self.skip_unreadable = skip_unreadable
        self.check_plaintext = check_plaintext
        self.max_passes = max_passes
        self.rate_limit = rate_limit
        self.progress = progress
        self._unreadable: set[bytes] = set()
        self._worker_error: BaseException | None = None
        self.report = MigrationReport({r.name: ResourceCounts(r.name, targets[r.name]) for r in self.resources},
                                      dry_run=dry_run)

    @staticmethod
    def targets_for(config: EncryptionConfiguration, resources: Sequence[Resource]) -> dict[str, str]:
        return {r.name: config.transformer_for(r.name).write_label for r in resources}

    # -- driver ------------------------------------------------------------------------------
    async def run(self) -> MigrationReport:
        t0 = time.monotonic()
        rep = self.report
        rep.resumed = self.state.resumed
        for n in range(1, self.max_passes + 1):
            before = rep.rewritten
            unsettled = sum(c.gave_up for c in rep.resources.values())
            for r in self.resources:
                for prefix in r.prefixes:
                    start = self.state.start_key(r.name, prefix) if n == 1 else prefix
                    if start is not None:
                        await self._scan(r, prefix, start, first_pass=n == 1)
            rep.passes = n
            if n == 1:
                rep.first_pass_elapsed = time.monotonic() - t0
            gave_up = sum(c.gave_up for c in rep.resources.values()) - unsettled
            if self.dry_run or (rep.rewritten == before and gave_up == 0 and not (n == 1 and rep.resumed)):
                rep.complete = True
                break
        rep.elapsed = time.monotonic() - t0
        if any(c.unreadable for c in rep.resources.values()):
            rep.complete = False  # values left in an old format: the migration is not complete
        if rep.complete and not self.dry_run:
            self.state.mark_complete()
        return rep

    # -- one prefix --------------------------------------------------------------------------
    async def _scan(self, r: Resource, prefix: bytes, start: bytes, first_pass: bool) -> None:
        t = self.transformers[r.name]
        counts = self.report.resources[r.name]
        end = prefix_end(prefix)
        queue: asyncio.Queue[tuple[_Page, list[_Item]] | None] = asyncio.Queue(maxsize=self.concurrency * 2)
        pages: deque[_Page] = deque()
        workers = [asyncio.create_task(self._worker(queue, t, counts, r, prefix, pages, first_pass))
                   for _ in range(self.concurrency)]
        t_rate = time.monotonic()
        done_values = 0
        key: bytes | None = start
        next_fetch = asyncio.ensure_future(self._fetch(start, end))
        try:
            while key is not None:
                resp = await next_fetch
                kvs = list(resp.kvs)
                key = kvs[-1].key + b"\x00" if resp.more and kvs else None
                if key is not None:
                    next_fetch = asyncio.ensure_future(self._fetch(key, end))
                items = self._prepare(kvs, t, counts)
                page = _Page(key)
                pages.append(page)
                batches = self._split(items)
                page.outstanding = len(batches)
                if not batches:
                    self._settle(pages, r, prefix, first_pass)
                for b in batches:
                    await queue.put((page, b))
                if self.progress:
                    self.progress(counts)
                done_values += len(kvs)
                if self.rate_limit:
                    ahead = done_values / self.rate_limit - (time.monotonic() - t_rate)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if self._worker_error is not None:
                    break  # a write failed: stop scanning; the error is raised below
        finally:
            if not next_fetch.done():
                next_fetch.cancel()
            for _ in workers:
                await queue.put(None)
            results = await asyncio.gather(*workers, return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                raise res
        if first_pass and not self.dry_run:
            self.state.finish(r.name, prefix)

    async def _fetch(self, key: bytes, end: bytes) -> pb.RangeResponse:
        # serializable: served by the member itself, no ReadIndex round; safe because every write is
        # guarded by mod_revision and a failed guard returns the current value (linearizable, in the Txn)
        return await self.client.range(pb.RangeRequest(key=key, range_end=end, limit=self.page_size,
                                                       serializable=True))

    def _prepare(self, kvs: list[Any], t: ResourceTransformer, counts: ResourceCounts) -> list[_Item]:
        items: list[_Item] = []
        for kv in kvs:
            counts.scanned += 1
            if t.is_current(kv.value):
                counts.current += 1
                continue
            new = self._reencrypt(kv.key, kv.value, t, counts)
            if new is not None:
                items.append(_Item(kv.key, kv.mod_revision, new))
        return items

    def _reencrypt(self, key: bytes, value: bytes, t: ResourceTransformer, counts: ResourceCounts) -> bytes | None:
        try:
            res = t.read(value, key)
            if (self.check_plaintext and "aescbc" in (res.provider, t.write_provider.type_name)
                    and not looks_like_kubernetes_object(res.plaintext)):
                # the preflight refused these; this one was written since (see preflight.py)
                what = (f"aescbc key {res.key_name!r} decrypted the value to" if res.provider == "aescbc"
                        else "the value would be encrypted with aescbc but is")
                raise TransformError(
                    f"{what} data that is not a Kubernetes object (AES-CBC is unauthenticated: such a value "
                    "cannot be told apart from a wrong key; --force=non-kubernetes accepts it)",
                    reason="non-kubernetes", key_name=res.key_name)
        except TransformError as e:
            msg = f"{etcd_key_text(key)}: cannot decrypt ({e})"
            if not self.skip_unreadable:
                raise MigrationError(f"{msg}; nothing on this page was rewritten. Fix the key in the "
                                     "EncryptionConfiguration, or pass --skip-unreadable to leave such values "
                                     "as they are") from None
            if key not in self._unreadable:  # counted once, whatever the number of passes
                self._unreadable.add(key)
                counts.unreadable += 1
                if len(self.report.problems) < 50:
                    self.report.problems.append(msg)
            return None
        return t.write(res.plaintext, key)

    def _split(self, items: list[_Item]) -> list[list[_Item]]:
        out: list[list[_Item]] = []
        cur: list[_Item] = []
        size = 0
        for it in items:
            n = len(it.key) * 2 + len(it.value) + 64
            if cur and (len(cur) >= self.batch_ops or size + n > self.batch_bytes):
                out.append(cur)
                cur, size = [], 0
            cur.append(it)
            size += n
        if cur:
            out.append(cur)
        return out

    def _settle(self, pages: deque[_Page], r: Resource, prefix: bytes, first_pass: bool) -> None:
        """Advance the checkpoint over every leading page whose batches are all committed."""
        last: _Page | None = None
        while pages and pages[0].outstanding == 0:
            last = pages.popleft()
        if last is not None and last.next_key is not None and first_pass and not self.dry_run:
            self.state.advance(r.name, prefix, last.next_key)

    async def _worker(self, queue: asyncio.Queue[tuple[_Page, list[_Item]] | None], t: ResourceTransformer,
                      counts: ResourceCounts, r: Resource, prefix: bytes, pages: deque[_Page],
                      first_pass: bool) -> None:
        failed: BaseException | None = None
        while True:
            job = await queue.get()
            if job is None:
                break
            if failed is not None:
                continue  # drain without writing
            page, batch = job
            try:
                await self._commit(batch, t, counts)
            except BaseException as e:  # re-raised by _scan once every worker stopped
                failed = e
                self._worker_error = e
                continue
            page.outstanding -= 1
            if page.outstanding == 0:
                self._settle(pages, r, prefix, first_pass)
        if failed is not None:
            raise failed

    # -- writing -----------------------------------------------------------------------------
    async def _commit(self, batch: list[_Item], t: ResourceTransformer, counts: ResourceCounts) -> None:
        if self.dry_run:
            counts.rewritten += len(batch)
            return
        pending = batch
        for attempt in range(8):
            if not pending:
                return
            if attempt >= 3 and len(pending) > 1:  # a hot key keeps failing the batch: go one by one
                await asyncio.gather(*(self._commit([it], t, counts) for it in pending))
                return
            pending = await self._txn(pending, t, counts)
            if pending:
                await asyncio.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
        counts.gave_up += len(pending)
        for it in pending[:5]:
            if len(self.report.problems) < 50:
                self.report.problems.append(f"{etcd_key_text(it.key)}: kept changing; left for the next pass")

    async def _txn(self, items: list[_Item], t: ResourceTransformer, counts: ResourceCounts) -> list[_Item]:
        """One guarded Txn; returns the items still to write (re-derived from fresh values)."""
        req = pb.TxnRequest(
            compare=[pb.Compare(key=it.key, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                                mod_revision=it.mod_revision) for it in items],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=it.key, value=it.value, ignore_lease=True))
                     for it in items],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=it.key)) for it in items],
        )
        resp = await self.client.txn(req)
        if resp.succeeded:
            counts.rewritten += len(items)
            return []
        retry: list[_Item] = []
        for it, op in zip(items, resp.responses, strict=True):
            kvs = op.response_range.kvs
            if not kvs:
                counts.deleted += 1
                continue
            kv = kvs[0]
            if kv.mod_revision == it.mod_revision:
                retry.append(it)  # not this one: it only failed with the batch
                continue
            counts.conflicts += 1
            if t.is_current(kv.value):
                counts.raced_current += 1
                continue
            new = self._reencrypt(kv.key, kv.value, t, counts)
            if new is not None:
                retry.append(_Item(kv.key, kv.mod_revision, new))
        return retry
