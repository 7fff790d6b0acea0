"""``doctor``: which situation the cluster is in (healthy, alarm, minority lost, quorum lost) and what to run."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from etcdwarden.cli.common import client_config
from etcdwarden.cli.output import Output
from etcdwarden.errors import EXIT_FAILED, EXIT_OK
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.endpoints import Endpoint, parse_endpoint
from etcdwarden.restore.diagnose import Diagnosis, diagnose


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", parents=parents, help="say which situation the cluster is in and the command that "
                       "gets it out (member replace, restore cluster, defrag)")
    p.add_argument("--spec", metavar="cluster.yaml", help="the cluster spec: its members are checked, and it is "
                   "named in the suggested commands")
    p.add_argument("--backup", metavar="DIR", help="the backup directory to name in a suggested restore")
    p.set_defaults(func=cmd_doctor)


def _endpoints(args: argparse.Namespace, cfg_eps: tuple[Endpoint, ...]) -> list[Endpoint]:
    if args.spec:
        from etcdwarden.restore.spec import ClusterSpec

        spec = ClusterSpec.load(Path(args.spec))
        return [parse_endpoint(m.client_urls[0]) for m in spec.members]
    return list(cfg_eps)


def cmd_doctor(args: argparse.Namespace, out: Output) -> int:
    cfg = client_config(args)
    eps = _endpoints(args, cfg.endpoints)
    if args.spec and getattr(args, "endpoints", None) is None:
        cfg = cfg.with_endpoints(eps)

    async def go() -> Diagnosis:
        async with EtcdClient(cfg) as c:
            d, _hs = await diagnose(c, eps, args.spec, args.backup)
            return d

    d = asyncio.run(go())
    if out.is_json:
        out.json(d.as_json())
    else:
        out.line(f"situation: {d.situation}")
        out.line(d.summary)
        for cmd in d.commands:
            out.line(f"run: {cmd}")
    return EXIT_OK if d.ok else EXIT_FAILED
