"""Is a member served by the process we think serves it?

A restore records, per member, the PID of the etcd it started (process runtime). That PID is only worth
recording, and a restore is only verified, when the process is alive, runs on the member's data dir, owns
the sockets listening on the member's URLs (``/proc/net/tcp`` inode matched with ``/proc/PID/fd``; skipped
where the owner is not visible to us), and the member answering on its client URL has the member ID
the cluster lists under the member's name and peer URLs.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

from etcdwarden.errors import EtcdError, EtcdwardenError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.etcd.endpoints import parse_endpoint
from etcdwarden.processes import pid_alive
from etcdwarden.restore import procs
from etcdwarden.restore.spec import MemberSpec


async def answering_id(client: ClientConfig, url: str, timeout: float = 2.0) -> tuple[int | None, str]:
    """The member ID reported by whatever answers Status on client ``url`` (``None`` and why when nothing does)."""
    try:
        ep = parse_endpoint(url)
    except EtcdwardenError as e:
        return None, str(e)
    cfg = dataclasses.replace(client, endpoints=(ep,), dial_timeout=min(client.dial_timeout, timeout))
    async with EtcdClient(cfg) as c:
        try:
            st = await c.status(ep, timeout=timeout)
        except EtcdError as e:
            return None, e.detail
    return int(st.header.member_id), ""


def port_problems(m: MemberSpec, pid: int) -> list[str]:
    """Each of the member's URLs must be listened on, by ``pid`` where the owner is visible."""
    out: list[str] = []
    for url in (*m.client_urls, *m.peer_urls):
        u = urlsplit(url)
        if u.port is None:
            continue
        listening, owners = procs.port_owners(u.port, u.hostname)
        if not listening:
            out.append(f"member {m.name}: nothing listens on {url}")
        elif owners and pid not in owners:
            out.append(f"member {m.name}: {url} is held by " + ", ".join(procs.describe(o) for o in sorted(owners))
                       + f", not by its etcd PID {pid}")
    return out


def process_problems(m: MemberSpec, pid: int | None) -> list[str]:
    """Why ``pid`` is not the live etcd serving member ``m`` (empty: it is)."""
    if pid is None:
        return [f"member {m.name}: no PID is recorded for its etcd"]
    if not pid_alive(pid):
        return [f"member {m.name}: its etcd process (PID {pid}) is not running"]
    if pid not in procs.running_on(m.data_path):
        return [f"member {m.name}: PID {pid} is not an etcd running on {m.data_dir} ({procs.describe(pid)})"]
    return port_problems(m, pid)


async def identity_problems(client: ClientConfig, members: list[pb.Member], m: MemberSpec,
                            recorded_id: str | None) -> tuple[int | None, list[str]]:
    """The member listed under ``m``'s peer URLs must be named ``m.name`` and answer on ``m``'s client URL."""
    listed = [x for x in members if set(x.peerURLs) & set(m.peer_urls)]
    if len(listed) != 1:
        return None, [f"member {m.name}: {len(listed)} members of the cluster have its peer URLs {m.peer}"]
    entry = listed[0]
    problems: list[str] = []
    if entry.name != m.name:
        problems.append(f"member {m.name}: the cluster lists its peer URLs under the name {entry.name!r}")
    if recorded_id and recorded_id != f"{entry.ID:x}":
        problems.append(f"member {m.name}: the cluster lists it as {entry.ID:x}, the restore recorded {recorded_id}")
    for url in m.client_urls:
        mid, why = await answering_id(client, url)
        if mid is None:
            problems.append(f"member {m.name} does not answer on {url}: {why}")
        elif mid != entry.ID:
            problems.append(f"member {m.name}: {url} is answered by member {mid:x}, not by {m.name} ({entry.ID:x})")
    return int(entry.ID), problems
