"""Issue 11 item 15: the README and the help agree with the code.

Every ``--flag`` the README (and contrib's docs) names is a flag of some command, or one of etcd's and the
other tools' flags listed here; every ``etcdwarden COMMAND SUBCOMMAND`` it shows exists; ``config validate
--help`` is its own help, not the daemon's.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from etcdwarden.cli.main import COMMANDS, build_parser

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "contrib" / "kubernetes" / "README.md"]
# flags of etcd, kube-apiserver, kubectl, systemctl, mypy... that the documents quote
FOREIGN = {"--advertise-client-urls", "--cert-file", "--key-file", "--trusted-ca-file", "--force-new-cluster",
           "--quota-backend-bytes", "--encryption-provider-config", "--from-literal", "--from-file", "--now",
           "--strict", "--help", "--initial-cluster-state", "--storage-media-type",
           "--encryption-provider-config-automatic-reload"}


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], set[str]]:
    out = {path: {s for a in parser._actions for s in a.option_strings}}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_walk(sub, (*path, name)))
    return out


def _commands() -> dict[tuple[str, ...], set[str]]:
    found: dict[tuple[str, ...], set[str]] = {}
    for name in COMMANDS:
        found.update({k: v for k, v in _walk(build_parser([name])).items() if k[:1] == (name,)})
    return found


def test_every_flag_the_docs_name_exists() -> None:
    flags = set().union(*_commands().values()) | FOREIGN
    for doc in DOCS:
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", doc.read_text()))
        assert not named - flags, f"{doc.name} names flags no command has: {sorted(named - flags)}"
    assert "--also-stop" not in flags  # a field of the cluster spec (also_stop), not a flag


def test_every_command_the_readme_shows_exists() -> None:
    commands = _commands()
    text = (ROOT / "README.md").read_text().split("## Commands", 1)[1].split("```")[1]
    shown = re.findall(r"^etcdwarden ([a-z]+)(?: ([a-z|]+(?:\|[a-z]+)*))?", text, re.MULTILINE)
    assert len(shown) > 10
    for cmd, subs in shown:
        assert (cmd,) in commands, cmd
        has_subs = any(len(k) == 2 and k[0] == cmd for k in commands)
        for sub in subs.split("|") if subs and has_subs else ():
            assert (cmd, sub) in commands, f"etcdwarden {cmd} {sub}"
    assert ("snapshot", "get") in commands


def test_config_validate_help_is_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser(["config"]).parse_args(["config", "validate", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "etcd is not contacted" in text and "every problem" in text
    for daemon_only in ("--once", "--listen", "--deadline", "SIGHUP", "--endpoints", "--dial-timeout"):
        assert daemon_only not in text, daemon_only
