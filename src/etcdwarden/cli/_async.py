"""Run the library's coroutines from synchronous CLI handlers, with a client opened and closed."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from etcdwarden.cli.common import client_config
from etcdwarden.cli.output import Output
from etcdwarden.etcd.client import EtcdClient

T = TypeVar("T")


def with_client(args: argparse.Namespace, out: Output, fn: Callable[[EtcdClient], Awaitable[T]]) -> T:
    notes: list[str] = []
    cfg = client_config(args, notes=notes)
    for n in notes:
        out.info(n)

    async def go() -> T:
        async with EtcdClient(cfg) as client:
            return await fn(client)

    return asyncio.run(go())
