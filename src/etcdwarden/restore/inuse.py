"""Is an etcd data directory in use? Asked before any restore moves it aside.

A restore under a running etcd is silently lost: the process keeps serving the directory that was moved
aside, and everything it acknowledges afterwards is gone at its next restart. A directory is in use when

* a process has the directory or a file below it open (``/proc/PID/fd``), or runs with it as ``--data-dir``;
* a process holds the bbolt lock of its ``member/snap/db`` (a running etcd always does);
* the member recorded in it (its ID from the WAL metadata, its URLs from the ``members`` bucket) answers
  on one of its client URLs (gRPC Status reports that member ID) or peer URLs (``/members`` lists it with
  that peer URL): this also finds an etcd whose process we cannot see (another user, a container).

Each finding names the PID where it can be known (for a URL: the owner of the listening socket).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from etcdwarden.errors import EtcdError, EtcdwardenError
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.etcd.endpoints import parse_endpoint
from etcdwarden.restore import procs
from etcdwarden.restore.checks import Forces, db_locked, refuse
from etcdwarden.snapshot.bbolt import BoltFile
from etcdwarden.snapshot.wal import fields


@dataclass(frozen=True)
class User:
    """One reason a data directory is in use."""

    pid: int | None
    what: str

    def __str__(self) -> str:
        return f"{procs.describe(self.pid)} {self.what}" if self.pid is not None else self.what


@dataclass(frozen=True)
class RecordedMember:
    """The member a data directory belongs to, as recorded in it."""

    member_id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]


# -- what the directory records --------------------------------------------------------------------
def wal_member_id(wal_dir: Path) -> int | None:
    """The member ID in the metadata record of a WAL file (``etcdserverpb.Metadata.NodeID``).

    Every WAL file starts with a crc record and the metadata record (etcd-internals §4.2: 8-byte
    little-endian length, top byte = 0x80|padding, then ``walpb.Record{1 type, 2 crc, 3 data}``).
    """
    try:
        files = sorted(wal_dir.glob("*.wal"))
    except OSError:
        return None
    for f in reversed(files):
        try:
            with open(f, "rb") as fh:
                data = fh.read(1 << 16)
        except OSError:
            continue
        off = 0
        with_records = 0
        while off + 8 <= len(data) and with_records < 8:
            head = int.from_bytes(data[off : off + 8], "little")
            off += 8
            n = head & ((1 << 56) - 1)
            pad = (head >> 56) & 0x7 if head >> 63 else 0
            if n == 0 or off + n > len(data):
                break
            try:
                rec = fields(data[off : off + n])
                if rec.get(1) == 1 and isinstance(rec.get(3), bytes):
                    node = fields(rec[3]).get(1)
                    if isinstance(node, int) and node:
                        return node
            except ValueError:
                break
            off += n + pad
            with_records += 1
    return None


def recorded_member(data_dir: Path) -> RecordedMember | None:
    """The member ``data_dir`` belongs to (``None`` when it records none we can read)."""
    mid = wal_member_id(data_dir / "member" / "wal")
    db = data_dir / "member" / "snap" / "db"
    if mid is None or not db.is_file():
        return None
    from etcdwarden.snapshot.status import iter_bucket

    try:
        with BoltFile(db) as b:
            for key, value in iter_bucket(b, b"members"):
                if key == f"{mid:x}".encode():
                    doc = json.loads(value)
                    return RecordedMember(mid, str(doc.get("name") or ""), tuple(doc.get("peerURLs") or ()),
                                          tuple(doc.get("clientURLs") or ()))
    except Exception:
        # a database being written to may not read consistently: the other checks (open files, lock) still apply
        return None
    return None


# -- who uses it -----------------------------------------------------------------------------------
def local_users(data_dir: Path, exclude: set[int] | None = None) -> list[User]:
    """Processes on this host that have ``data_dir`` open, run on it, or hold its database lock."""
    skip = (exclude or set()) | {os.getpid()}
    out: list[User] = []
    seen: set[int] = set()
    for pid, link in sorted(procs.open_below(data_dir, skip).items()):
        out.append(User(pid, f"has {link} open"))
        seen.add(pid)
    # the command line of a process we descend from may name the directory too (``sudo etcdwarden restore member
    # --data-dir DIR``, ``time ...``, ``sh -c ...``): etcd starts no etcdwarden, so none of them is an etcd on it
    callers = procs.ancestors(os.getpid())
    for pid in procs.running_on(data_dir):
        if pid not in seen and pid not in skip and pid not in callers:
            out.append(User(pid, f"runs with --data-dir {data_dir}"))
            seen.add(pid)
    if not out and db_locked(data_dir):
        out.append(User(None, f"a process holds the lock of {data_dir / 'member' / 'snap' / 'db'} (not visible "
                              "to us: another user's process, or in a container)"))
    return out


def _owner(url: str) -> int | None:
    u = urlsplit(url)
    if u.port is None:
        return None
    _, owners = procs.port_owners(u.port, u.hostname)
    return next(iter(owners)) if len(owners) == 1 else None


def _peer_lists(url: str, member_id: int, timeout: float) -> bool:
    """Whether an etcd answers on peer ``url`` and lists ``member_id`` with that peer URL (``/members``)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a liveness probe of our own member: identity is checked by the ID below
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/members", timeout=timeout,  # noqa: S310 - http(s) only
                                    context=ctx if url.startswith("https") else None) as r:
            doc = json.loads(r.read(1 << 20))
    except (OSError, ValueError):
        return False
    if not isinstance(doc, list):
        return False
    return any(isinstance(m, dict) and m.get("id") == member_id and url in (m.get("peerURLs") or [])
               for m in doc)


async def answering(member: RecordedMember, client: ClientConfig | None, where: Path,
                    timeout: float = 1.0) -> list[User]:
    """The recorded member answering on its own client or peer URLs."""
    out: list[User] = []
    label = f"member {member.name or '?'} ({member.member_id:x}), the member recorded in {where}"
    for url in member.client_urls:
        try:
            ep = parse_endpoint(url)
        except EtcdwardenError:
            continue
        cfg = dataclasses.replace(client or ClientConfig(endpoints=()), endpoints=(ep,), dial_timeout=timeout)
        async with EtcdClient(cfg) as c:
            try:
                st = await c.status(ep, timeout=timeout * 2)
            except EtcdError:
                continue
        if int(st.header.member_id) == member.member_id:
            out.append(User(_owner(url), f"answers on {url} as {label}"))
            return out
    for url in member.peer_urls:
        if url.startswith(("http://", "https://")) and await asyncio.to_thread(_peer_lists, url,
                                                                                member.member_id, timeout):
            out.append(User(_owner(url), f"answers on peer URL {url} as {label}"))
            return out
    return out


async def users(data_dir: Path, client: ClientConfig | None = None, exclude: set[int] | None = None,
                urls: bool = True) -> list[User]:
    """Every reason ``data_dir`` is in use (empty: nothing uses it)."""
    found = await asyncio.to_thread(local_users, data_dir, exclude)
    if urls:
        member = await asyncio.to_thread(recorded_member, data_dir)
        if member is not None:
            for u in await answering(member, client, data_dir):
                if u.pid is None or u.pid not in {x.pid for x in found}:
                    found.append(u)
    return found


def refusal(what: str, found: list[User], forces: Forces, advice: str) -> list[str]:
    """Refuse (``--force=in-use``) when ``found`` is not empty; with the force, the warning to show."""
    if not found:
        return []
    msg = f"{what} is in use: " + "; ".join(str(u) for u in found) + f". {advice}"
    if "in-use" not in forces:
        raise refuse("in-use", msg)
    return [msg + " (--force=in-use)"]


