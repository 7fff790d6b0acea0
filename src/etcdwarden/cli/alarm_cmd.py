"""``alarm list|disarm``."""

from __future__ import annotations

import argparse
from typing import Any

from etcdwarden.cli._async import with_client
from etcdwarden.cli.output import Output
from etcdwarden.errors import EXIT_OK
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.inspect import ALARM_NAMES


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("alarm", help="list or disarm alarms (NOSPACE, CORRUPT)")
    s = p.add_subparsers(dest="alarm_command", metavar="SUBCOMMAND", required=True)
    ls = s.add_parser("list", parents=parents, help="list active alarms")
    ls.set_defaults(func=cmd_list)
    dis = s.add_parser("disarm", parents=parents, help="disarm every active alarm")
    dis.set_defaults(func=cmd_disarm)


def _render(out: Output, alarms: list[pb.AlarmMember], verb: str = "") -> None:
    if out.is_json:
        out.json({"alarms": [{"memberID": int(a.memberID), "alarm": ALARM_NAMES.get(int(a.alarm), str(a.alarm))}
                             for a in alarms]})
        return
    for a in alarms:
        out.line(f"{verb}memberID:{a.memberID} alarm:{ALARM_NAMES.get(int(a.alarm), str(a.alarm))}")
    if not alarms and not verb:
        out.info("no active alarms")


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    _render(out, with_client(args, out, lambda c: c.alarms()))
    return EXIT_OK


def cmd_disarm(args: argparse.Namespace, out: Output) -> int:
    async def go(c: EtcdClient) -> list[pb.AlarmMember]:
        active = await c.alarms()
        for a in active:
            await c.alarm_disarm(int(a.memberID), int(a.alarm))
        return active

    disarmed = with_client(args, out, go)
    _render(out, disarmed, verb="disarmed ")
    if not disarmed:
        out.info("no active alarms to disarm")
    return EXIT_OK
