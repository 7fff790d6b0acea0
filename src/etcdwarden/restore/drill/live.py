"""What the restored member serves: its revision, HashKV and key count at the recorded revision, and every
Kubernetes value (read page by page at the member's revision and decoded, :mod:`.keys`).

Everything is read right after the member came up, and at fixed revisions: a lease in the backup that
expires while the drill runs deletes keys and moves the revision on, but what was served at the
backup's revision does not change (the scratch member never compacts).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from etcdwarden.errors import AuthenticationFailed, EtcdError, EtcdwardenError, PermissionDenied
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient, prefix_end
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.format.manifest import HashKV
from etcdwarden.restore.drill.keys import KUBERNETES_PREFIXES, Decoder, KeyDecoding
from etcdwarden.restore.scratch_tls import ScratchTLS

PAGE = 500
TIMEOUT = 300.0  # HashKV and counting read the whole database


class DrillAborted(EtcdwardenError):
    """The drill was asked to stop (the daemon is stopping, lost its leadership, or the drill ran too long)."""


@dataclass
class Live:
    revision: int  # the member's revision when it came up
    at: int  # the revision keys and HashKV were measured at (the recorded HashKV's, or ``revision``)
    keys: int | None = None
    hash: int | None = None
    compact_revision: int | None = None
    problems: dict[str, str] = field(default_factory=dict)  # figure -> why it could not be measured
    decoding: KeyDecoding = field(default_factory=KeyDecoding)


def client_config(url: str, tls: ScratchTLS) -> ClientConfig:
    """How the drill reaches its scratch member: over TLS, with the member's own client certificate."""
    return tls.client_config(url, dial_timeout=5.0, command_timeout=60.0)


async def measure(client: EtcdClient, url: str, recorded: HashKV | None) -> Live:
    """Revision first (nothing may move it before), then HashKV and the live key count at the recorded
    HashKV's revision (or the member's own when none was recorded)."""
    ep = client.endpoint(url)
    st = await client.status(ep)
    revision = int(st.header.revision)
    at = recorded.revision if recorded is not None else revision
    live = Live(revision, at)
    if at > revision:
        why = f"the restored member's revision {revision} is below the recorded HashKV revision {at}"
        live.problems.update(hash_kv=why, keys=why)
        return live
    hreq = pb.HashKVRequest(revision=at)
    try:
        h = await client.call(ep, lambda m, md, t: m.maintenance.HashKV(hreq, metadata=md, timeout=t), TIMEOUT)
        live.hash, live.compact_revision = int(h.hash), max(0, int(h.compact_revision))
    except (PermissionDenied, AuthenticationFailed):
        raise  # the drill's credentials, not the backup
    except EtcdError as e:
        live.problems["hash_kv"] = f"HashKV at revision {at} failed: {e.detail}"
    try:
        r = await client.range_on(ep, pb.RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True, revision=at,
                                                      serializable=True), TIMEOUT)
        live.keys = int(r.count)
    except (PermissionDenied, AuthenticationFailed):
        raise
    except EtcdError as e:
        live.problems["keys"] = f"counting the keys at revision {at} failed: {e.detail}"
    return live


async def scan_kubernetes(client: EtcdClient, url: str, revision: int, decoder: Decoder, out: KeyDecoding,
                          abort: threading.Event | None = None) -> None:
    """Decode every value under the Kubernetes prefixes at ``revision``, a page at a time."""
    ep = client.endpoint(url)
    for prefix in KUBERNETES_PREFIXES:
        key, end = prefix, prefix_end(prefix)
        while True:
            if abort is not None and abort.is_set():
                raise DrillAborted("the drill was stopped while reading the restored keys")
            resp = await client.range_on(ep, pb.RangeRequest(key=key, range_end=end, limit=PAGE, revision=revision,
                                                             serializable=True), TIMEOUT)
            for kv in resp.kvs:
                decoder.check(kv.key, kv.value, out)
            if not resp.more or not resp.kvs:
                break
            key = resp.kvs[-1].key + b"\x00"
