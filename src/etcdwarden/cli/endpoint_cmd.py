"""``endpoint status|health [--cluster]``: etcdctl's columns, concurrent per-member calls."""

from __future__ import annotations

import argparse
from typing import Any

from etcdwarden.cli._async import with_client
from etcdwarden.cli.output import Output, humanize_bytes
from etcdwarden.errors import EXIT_FAILED, EXIT_OK, EtcdError
from etcdwarden.etcd.client import EtcdClient, member_endpoint
from etcdwarden.etcd.endpoints import Endpoint
from etcdwarden.inspect import Health, MemberStatus, Quorum, health_all, quorum, status_all, target_endpoints

STATUS_HEADERS = [
    "ENDPOINT", "ID", "VERSION", "DB SIZE", "IS LEADER", "IS LEARNER",
    "RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX", "ERRORS",
]


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("endpoint", help="status and health of members")
    s = p.add_subparsers(dest="endpoint_command", metavar="SUBCOMMAND", required=True)
    st = s.add_parser("status", parents=parents, help="status of each endpoint (etcdctl's columns)")
    st.add_argument("--cluster", action="store_true", help="all members, from the member list")
    st.set_defaults(func=cmd_status)
    he = s.add_parser("health", parents=parents, help="health of each endpoint and of quorum")
    he.add_argument("--cluster", action="store_true", help="all members, from the member list")
    he.set_defaults(func=cmd_health)


def status_row(ms: MemberStatus) -> list[object]:
    s = ms.status
    if s is None:
        return [ms.endpoint.raw, "", "", "", "", "", "", "", "", ms.error or "unreachable"]
    return [
        ms.endpoint.raw,
        f"{s.header.member_id:x}",
        s.version,
        humanize_bytes(int(s.dbSize)),
        str(ms.is_leader).lower(),
        str(bool(s.isLearner)).lower(),
        s.raftTerm,
        s.raftIndex,
        s.raftAppliedIndex,
        ", ".join(s.errors),
    ]


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    async def go(c: EtcdClient) -> list[MemberStatus]:
        return await status_all(c, await target_endpoints(c, bool(args.cluster)))

    rows = with_client(args, out, go)
    if out.is_json:
        out.json([r.as_json() for r in rows])
    else:
        out.table(STATUS_HEADERS, [status_row(r) for r in rows])
    failed = [r for r in rows if not r.ok]
    for r in failed:
        out.info(f"Failed to get the status of endpoint {r.endpoint.raw} ({r.error})")
    return EXIT_FAILED if failed else EXIT_OK


async def _serializable_endpoints(c: EtcdClient) -> list[Endpoint]:
    eps: list[Endpoint] = []
    for m in await c.member_list(linearizable=False):
        ep = member_endpoint(m)
        if ep is not None and ep.target not in {e.target for e in eps}:
            eps.append(ep)
    return eps


def cmd_health(args: argparse.Namespace, out: Output) -> int:
    async def go(c: EtcdClient) -> tuple[list[Health], Quorum]:
        try:
            eps = await target_endpoints(c, bool(args.cluster))
        except EtcdError:
            if not args.cluster:
                raise
            eps = await _serializable_endpoints(c)  # no quorum: a member's own (possibly stale) list
        hs = await health_all(c, eps)
        return hs, await quorum(c, hs)

    hs, q = with_client(args, out, go)
    if out.is_json:
        out.json({
            "endpoints": [
                {"endpoint": h.endpoint.raw, "health": h.healthy, "took": f"{h.took * 1000:.3f}ms",
                 "error": h.error or ""}
                for h in hs
            ],
            "quorum": {"known": q.known, "has_quorum": q.has_quorum, "voters": q.voters,
                       "healthy_voters": q.healthy_voters, "needed": q.needed},
        })
    else:
        out.table(["ENDPOINT", "HEALTH", "TOOK", "ERROR"],
                  [[h.endpoint.raw, str(h.healthy).lower(), f"{h.took * 1000:.3f}ms", h.error or ""] for h in hs])
        if not q.known:
            out.line("quorum: unknown (no member answered the member list)")
        else:
            state = "yes" if q.has_quorum else "NO"
            out.line(f"quorum: {state} ({q.healthy_voters} of {q.voters} voting members healthy, "
                     f"{q.needed} needed)")
        if args.cluster:
            from etcdwarden.restore.diagnose import classify

            out.line(classify(hs, q).line())
    if any(not h.healthy for h in hs):
        out.error("unhealthy cluster")
        return EXIT_FAILED
    return EXIT_OK
