"""Entry point: build the parser from the command modules, run the chosen command, map errors.

Each command module has ``register(subparsers, parents)``; the handler it sets as ``func`` takes
``(args, out)`` and returns an exit code. Library errors become one line on stderr and their exit code
(see :mod:`etcdwarden.errors`); tracebacks only with ``ETCDWARDEN_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from etcdwarden import __version__
from etcdwarden.cli.common import add_global_options, resolve
from etcdwarden.cli.output import Output
from etcdwarden.errors import EXIT_FAILED, EXIT_USAGE, EtcdwardenError

Handler = Callable[[argparse.Namespace, Output], int]


def _command_modules() -> list[ModuleType]:
    from etcdwarden.cli import alarm_cmd, demo_cmd, endpoint_cmd, member_cmd

    return [endpoint_cmd, member_cmd, alarm_cmd, demo_cmd]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"Error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="etcdwarden", description="Operate etcd clusters safely: backup, restore, "
                     "recovery, defragmentation and encryption at rest.")
    parser.add_argument("--version", action="version", version=f"etcdwarden {__version__}")
    add_global_options(parser, suppress=False)
    parents = [_Parser(add_help=False)]
    add_global_options(parents[0], suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in _command_modules():
        mod.register(sub, parents)
    return parser


def run(argv: Sequence[str] | None = None, out: Output | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    output = out or Output()
    output.write_out = str(resolve(args, os.environ, "write_out"))
    if output.write_out not in ("table", "json"):
        output.error(f"unsupported output format {output.write_out!r}; use table or json")
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("ETCDWARDEN_DEBUG") else logging.WARNING,
        format='{"level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}',
        stream=sys.stderr,
    )
    try:
        return func(args, output)
    except EtcdwardenError as e:
        if os.environ.get("ETCDWARDEN_DEBUG"):
            logging.exception("command failed")
        output.error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        output.error("interrupted")
        return EXIT_FAILED


def main() -> None:
    # gRPC's C core logs handshake failures on stderr; our own message already says what failed.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    sys.exit(run())
