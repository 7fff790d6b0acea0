"""``member list|add|remove|promote|replace``."""

from __future__ import annotations

import argparse
from typing import Any

from etcdwarden.cli._async import with_client
from etcdwarden.cli.common import duration_arg
from etcdwarden.cli.output import Output
from etcdwarden.errors import EXIT_OK, NotFound, UsageError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient

HEADERS = ["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"]


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("member", help="list, add, remove and promote members")
    s = p.add_subparsers(dest="member_command", metavar="SUBCOMMAND", required=True)
    ls = s.add_parser("list", parents=parents, help="list members")
    ls.set_defaults(func=cmd_list)
    add = s.add_parser("add", parents=parents, help="add a member (start it with initial-cluster-state existing)")
    add.add_argument("name")
    add.add_argument("--peer-urls", required=True, help="comma-separated peer URLs of the new member")
    add.add_argument("--learner", action="store_true", help="add as a non-voting learner")
    add.set_defaults(func=cmd_add)
    rm = s.add_parser("remove", parents=parents, help="remove a member by hex ID")
    rm.add_argument("member_id")
    rm.set_defaults(func=cmd_remove)
    pr = s.add_parser("promote", parents=parents, help="promote a learner to a voting member")
    pr.add_argument("member_id")
    pr.set_defaults(func=cmd_promote)
    rp = s.add_parser("replace", parents=parents, help="replace a failed member (remove, move its data aside, add as "
                      "a learner, start, promote); needs quorum")
    rp.add_argument("name", help="the failed member's name (as in the spec)")
    rp.add_argument("--spec", required=True, metavar="cluster.yaml", help="the members and their runtimes")
    rp.add_argument("--timeout", type=duration_arg(positive=True), default=120.0, metavar="DURATION",
                    help="wait limit of each step (default 2m)")
    rp.add_argument("--dry-run", action="store_true", help="check quorum and print the steps; change nothing")
    rp.add_argument("--force", nargs="?", const="all", action="append", metavar="CHECK",
                    help="healthy: replace even a member that looks healthy")
    rp.set_defaults(func=cmd_replace)


def parse_id(text: str) -> int:
    try:
        v = int(text, 16)
    except ValueError:
        raise UsageError(f"bad member ID {text!r}: expected a hex ID as shown by `member list`") from None
    if not 0 < v < 2**64:
        raise UsageError(f"bad member ID {text!r}: out of range")
    return v


def member_json(m: pb.Member) -> dict[str, object]:
    return {"ID": int(m.ID), "name": m.name, "peerURLs": list(m.peerURLs),
            "clientURLs": list(m.clientURLs), "isLearner": bool(m.isLearner)}


def render(out: Output, members: list[pb.Member]) -> None:
    if out.is_json:
        out.json({"members": [member_json(m) for m in members]})
        return
    out.table(HEADERS, [
        [f"{m.ID:x}", "started" if m.name else "unstarted", m.name, ",".join(m.peerURLs),
         ",".join(m.clientURLs), str(bool(m.isLearner)).lower()]
        for m in members
    ])


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    render(out, with_client(args, out, lambda c: c.member_list()))
    return EXIT_OK


def cmd_add(args: argparse.Namespace, out: Output) -> int:
    urls = [u.strip() for u in str(args.peer_urls).split(",") if u.strip()]
    if not urls:
        raise UsageError("--peer-urls is empty")

    async def go(c: EtcdClient) -> pb.MemberAddResponse:
        return await c.member_add(urls, learner=bool(args.learner))

    resp = with_client(args, out, go)
    new = resp.member
    if out.is_json:
        out.json({"member": member_json(new), "members": [member_json(m) for m in resp.members]})
        return EXIT_OK
    kind = "learner" if args.learner else "member"
    out.line(f"Member {new.ID:x} added to cluster {resp.header.cluster_id:x} as a {kind}")
    initial = []
    for m in resp.members:
        name = args.name if m.ID == new.ID else m.name
        initial += [f"{name}={u}" for u in m.peerURLs]
    out.line(f'ETCD_NAME="{args.name}"')
    out.line(f'ETCD_INITIAL_CLUSTER="{",".join(initial)}"')
    out.line(f'ETCD_INITIAL_ADVERTISE_PEER_URLS="{",".join(new.peerURLs)}"')
    out.line('ETCD_INITIAL_CLUSTER_STATE="existing"')
    return EXIT_OK


def _known(c: EtcdClient, member_id: int) -> Any:
    async def check() -> None:
        ids = {int(m.ID) for m in await c.member_list()}
        if member_id not in ids:
            raise NotFound(f"member {member_id:x} is not in the cluster; see `etcdwarden member list`")
    return check()


def cmd_remove(args: argparse.Namespace, out: Output) -> int:
    mid = parse_id(args.member_id)

    async def go(c: EtcdClient) -> list[pb.Member]:
        await _known(c, mid)
        return await c.member_remove(mid)

    members = with_client(args, out, go)
    if out.is_json:
        out.json({"removed": mid, "members": [member_json(m) for m in members]})
    else:
        out.line(f"Member {mid:x} removed from the cluster")
    return EXIT_OK


def cmd_promote(args: argparse.Namespace, out: Output) -> int:
    mid = parse_id(args.member_id)

    async def go(c: EtcdClient) -> list[pb.Member]:
        await _known(c, mid)
        return await c.member_promote(mid)

    members = with_client(args, out, go)
    if out.is_json:
        out.json({"promoted": mid, "members": [member_json(m) for m in members]})
    else:
        out.line(f"Member {mid:x} promoted to a voting member")
    return EXIT_OK


def cmd_replace(args: argparse.Namespace, out: Output) -> int:
    import asyncio
    from pathlib import Path

    from etcdwarden.cli.common import client_config
    from etcdwarden.restore.checks import Forces
    from etcdwarden.restore.replace import ReplaceOptions, plan_replace, replace_member

    opts = ReplaceOptions(name=args.name, spec_path=Path(args.spec), client=client_config(args),
                          forces=Forces.parse(args.force), timeout=float(args.timeout))
    if args.dry_run:
        steps = asyncio.run(plan_replace(opts))
        if out.is_json:
            out.json({"dry_run": True, "steps": steps})
        else:
            out.line(f"member replace {args.name} (dry run: nothing changed)")
            for i, step in enumerate(steps, 1):
                out.line(f"  {i}. {step}")
        return EXIT_OK
    report = asyncio.run(replace_member(opts, progress=out.info))
    if out.is_json:
        out.json(report.as_json())
        return EXIT_OK
    out.line(f"member {report.name} replaced: new member ID {report.new_id} (was {report.removed_id or '-'}), "
             f"caught up at applied index {report.applied_index}, promoted; every member healthy "
             f"({report.seconds:.1f}s)")
    if report.moved_aside:
        out.line(f"its previous data directory was moved to {report.moved_aside}")
    return EXIT_OK
