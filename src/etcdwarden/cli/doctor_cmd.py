"""``doctor``: which situation the cluster is in (healthy, alarm, minority lost, quorum lost) and what to run.

With ``--spec`` and quorum lost, every local member's data directory is read offline (backend and WAL)
and compared with the newest backup of ``--repository`` (or the spec's ``repository``): when a survivor
holds more than that backup, ``restore quorum`` is recommended, with how many revisions a backup restore
would lose.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from etcdwarden.cli.common import client_config
from etcdwarden.cli.output import Output
from etcdwarden.cli.repo_options import repo_opts, repository_options
from etcdwarden.errors import EXIT_FAILED, EXIT_OK
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.endpoints import Endpoint, parse_endpoint
from etcdwarden.restore.diagnose import QUORUM_LOST, Diagnosis, diagnose, with_survey


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", parents=parents, help="say which situation the cluster is in and the command that "
                       "gets it out (member replace, restore quorum, restore cluster, defrag)")
    p.add_argument("--spec", metavar="cluster.yaml", help="the cluster spec: its members are checked (and, when "
                   "quorum is lost, their data directories read offline), and it is named in the suggested commands")
    p.add_argument("--backup", metavar="DIR", help="the backup directory to name in a suggested restore")
    p.add_argument("--repository", metavar="DIR|URL",
                   help="the backup repository (directory, file://, s3://, gs://, az://) whose newest backup is "
                        "compared with the surviving data when quorum is lost (default: --backup, then the spec's "
                        "repository)")
    repo_opts(p)
    p.set_defaults(func=cmd_doctor)


def _endpoints(args: argparse.Namespace, cfg_eps: tuple[Endpoint, ...]) -> list[Endpoint]:
    if args.spec:
        from etcdwarden.restore.spec import ClusterSpec

        spec = ClusterSpec.load(Path(args.spec))
        return [parse_endpoint(m.client_urls[0]) for m in spec.members]
    return list(cfg_eps)


def _offline(args: argparse.Namespace, d: Diagnosis) -> Diagnosis:
    """Quorum lost and a spec: read the data dirs, compare with the newest backup, advise."""
    from etcdwarden.restore.spec import ClusterSpec
    from etcdwarden.restore.survey import advise, newest_backup, survey

    spec = ClusterSpec.load(Path(args.spec))
    location = args.repository or args.backup or spec.repository
    backup = newest_backup(location, repository_options(args)) if location else None
    surveys = survey(spec)
    return with_survey(d, surveys, advise(surveys, backup, args.spec, location))


def cmd_doctor(args: argparse.Namespace, out: Output) -> int:
    cfg = client_config(args)
    eps = _endpoints(args, cfg.endpoints)
    if args.spec and getattr(args, "endpoints", None) is None:
        cfg = cfg.with_endpoints(eps)

    async def go() -> Diagnosis:
        async with EtcdClient(cfg) as c:
            d, _hs = await diagnose(c, eps, args.spec, args.repository or args.backup)
            return d

    d = asyncio.run(go())
    if d.situation == QUORUM_LOST and args.spec:
        d = _offline(args, d)
    if out.is_json:
        out.json(d.as_json())
    else:
        out.line(f"situation: {d.situation}")
        out.line(d.summary)
        if d.surveys:
            from etcdwarden.cli.quorum_cmd import survey_table

            survey_table(out, d.surveys)
        if d.advice is not None:
            b = d.advice.backup
            if b is not None:
                out.line(f"newest backup: {b.id}, revision {b.revision} ({b.where})")
            if d.advice.lost_by_backup_restore:
                out.line(f"a backup restore would lose {d.advice.lost_by_backup_restore} revisions")
            for n in d.advice.notes:
                out.line(f"note: {n}")
        for cmd in d.commands:
            out.line(f"run: {cmd}")
        for alt in d.advice.alternatives if d.advice is not None else []:
            out.line(f"or:  {alt}")
    return EXIT_OK if d.ok else EXIT_FAILED
