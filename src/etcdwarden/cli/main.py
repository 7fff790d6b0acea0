"""Entry point: build the parser from the command modules, run the chosen command, map errors.

Each command module has ``register(subparsers, parents)``; the handler it sets as ``func`` takes
``(args, out)`` and returns an exit code. Library errors become one line on stderr and their exit code
(see :mod:`etcdwarden.errors`); tracebacks only with ``ETCDWARDEN_DEBUG=1``. SIGINT, SIGTERM and SIGHUP end
a command with its cleanup done, one line and exit 128 + the signal (:mod:`etcdwarden.cli.signals`).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from etcdwarden import __version__
from etcdwarden.cli.common import CLI_SETTINGS, GLOBAL_FLAGS, add_global_options, resolve
from etcdwarden.cli.output import Output
from etcdwarden.cli.paths import check_path_args, path_arguments, unforeseen
from etcdwarden.cli.signals import SIGNALS, outcome, quiet_once_interrupted, signals_as_exceptions
from etcdwarden.errors import EXIT_USAGE, EtcdwardenError

Handler = Callable[[argparse.Namespace, Output], int]


# Top-level command -> (module that registers it, one-line help). Only the module of the command
# being run is imported, so every invocation pays just for what it uses (start-up time, memory).
# A module may register several top-level commands; each of them is listed here.
COMMANDS: dict[str, tuple[str, str]] = {
    "endpoint": ("etcdwarden.cli.endpoint_cmd", "status and health of members"),
    "member": ("etcdwarden.cli.member_cmd", "list, add, remove and promote members"),
    "alarm": ("etcdwarden.cli.alarm_cmd", "list or disarm alarms (NOSPACE, CORRUPT)"),
    "backup": ("etcdwarden.cli.backup_cmd", "back up the cluster (snapshot + resources + manifest)"),
    "receive": ("etcdwarden.cli.receive_cmd", "capture every revision into segments (continuous backup)"),
    "snapshot": ("etcdwarden.cli.snapshot_cmd", "offline status, verify, inspect and diff of snapshots"),
    "backups": ("etcdwarden.cli.backups_cmd", "the backups in a repository: list, show, delete, prune, copy"),
    "encryption": ("etcdwarden.cli.encryption_cmd", "encryption at rest: enable, rotate, disable, migrate, status"),
    "defrag": ("etcdwarden.cli.defrag_cmd", "safe rolling defragmentation (followers first, leader last)"),
    "demo": ("etcdwarden.cli.demo_cmd", "run the whole cycle on a local 3-member cluster"),
    "restore": ("etcdwarden.cli.restore_cmd", "restore a member's data directory or a whole cluster from a backup"),
    "doctor": ("etcdwarden.cli.doctor_cmd", "say which situation the cluster is in and the command that fixes it"),
    "daemon": ("etcdwarden.cli.daemon_cmd", "scheduled backups, retention and defrag; health and metrics"),
    "config": ("etcdwarden.cli.daemon_cmd", "validate daemon configuration files (config validate FILE...)"),
}

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"Error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _chosen(argv: Sequence[str]) -> str | None:
    """The top-level command in ``argv`` (skipping global options and their values)."""
    takes_value = {flag for flag, _d, _e, kind, _def, _h in GLOBAL_FLAGS if kind != "bool"} | {"-w"}
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok.startswith("-"):
            skip = tok in takes_value
            continue
        return tok if tok in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = _Parser(prog="etcdwarden", description="Operate etcd clusters safely: backup, restore, "
                     "recovery, defragmentation and encryption at rest.")
    parser.add_argument("--version", action="version", version=f"etcdwarden {__version__}")
    add_global_options(parser, suppress=False)
    parents = [_Parser(add_help=False)]
    add_global_options(parents[0], suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    chosen = _chosen(argv)
    if chosen is not None:
        importlib.import_module(COMMANDS[chosen][0]).register(sub, parents)
    for name, (_mod, help_) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_)  # listed in --help; loaded only when run
    return parser


def run(argv: Sequence[str] | None = None, out: Output | None = None, *, signals: list[int] | None = None) -> int:
    """Run one command; ``signals`` collects the signals received meanwhile."""
    arglist = list(sys.argv[1:] if argv is None else argv)
    output = out or Output()
    with signals_as_exceptions(signals) as received:
        try:
            return _run(arglist, output)
        except KeyboardInterrupt as e:
            line, code = outcome(e, received)
            output.error(line)
            return code


def _run(arglist: list[str], output: Output) -> int:
    parser = build_parser(arglist)
    args = parser.parse_args(arglist)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
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
        check_path_args(parser, args)
        return func(args, output)
    except EtcdwardenError as e:
        if os.environ.get("ETCDWARDEN_DEBUG"):
            logging.exception("command failed")
        output.error(e.render(CLI_SETTINGS))
        return e.exit_code
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        # the last line of defence against input the command did not foresee: one line, never a traceback
        if os.environ.get("ETCDWARDEN_DEBUG"):
            logging.exception("command failed")
        line, code = unforeseen(e, [(label, text) for _kind, label, text in path_arguments(parser, args)])
        output.error(line)
        return code


def _import_chosen(chosen: str | None) -> None:
    """Import the chosen command's module with the garbage collector off, then freeze what the imports made.

    Imports allocate tens of thousands of objects that live as long as the process; the collector would
    walk them again and again while they load and once more at exit (~10 ms of a short command such as
    ``snapshot status``). Frozen, they are left out of every later collection."""
    gc.disable()
    try:
        if chosen is not None:
            importlib.import_module(COMMANDS[chosen][0])
    finally:
        gc.freeze()
        gc.enable()


#: the commands that stream a database through several threads: one malloc arena (see etcdwarden.memory)
STREAMING = frozenset({"backup", "receive", "restore", "backups", "daemon", "demo"})


def main() -> None:
    # gRPC's C core logs handshake failures on stderr; our own message already says what failed.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    chosen = _chosen(sys.argv[1:])
    if chosen in STREAMING:
        from etcdwarden import memory

        memory.one_arena()
    _import_chosen(chosen)
    received: list[int] = []
    quiet_once_interrupted(received)
    try:
        code = run(signals=received)
    except KeyboardInterrupt:  # Ctrl-C again while the first one's line was being written
        code = SIGNALS[signal.SIGINT][1]
    for s in SIGNALS:  # the command is over: a signal now ends the process as it would any other
        signal.signal(s, signal.SIG_DFL)
    gc.freeze()  # the interpreter's teardown then does not walk every object once more
    sys.exit(code)
