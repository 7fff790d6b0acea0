"""CLI flags to DefragOptions (the Defragment timeout default) and the quota the server reports."""

from __future__ import annotations

import pytest

from etcdwarden.cli.defrag_cmd import options_from_args
from etcdwarden.cli.main import build_parser
from etcdwarden.defrag import DefragOptions, DefragReport, MemberResult, Outcome
from etcdwarden.defrag.quota import DEFAULT_QUOTA, reported
from etcdwarden.defrag.report import AlarmInfo
from etcdwarden.defrag.rules import AUTO_RULE
from etcdwarden.errors import UsageError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb

pytestmark = pytest.mark.unit


def opts(*argv: str, env: dict[str, str] | None = None) -> DefragOptions:
    args = ["defrag", *argv]
    return options_from_args(build_parser(args).parse_args(args), env or {})


def test_defrag_timeout_defaults_to_30s_not_the_global_5s() -> None:
    o = opts()
    assert o.defrag_timeout == 30.0
    assert o.wait == 60.0 and o.recover_timeout == 60.0
    assert o.rule is None and not o.compact and not o.move_leader and not o.dry_run
    assert o.db_quota_bytes is None  # never assumed: unknown unless given, reported or read on this host


def test_explicit_command_timeout_is_used_for_defragment() -> None:
    assert opts("--command-timeout", "2m").defrag_timeout == 120.0
    # a global flag before the subcommand counts as given, as does ETCDCTL_COMMAND_TIMEOUT
    argv = ["--command-timeout", "90s", "defrag"]
    args = build_parser(argv).parse_args(argv)
    assert options_from_args(args, {}).defrag_timeout == 90.0
    assert opts(env={"ETCDCTL_COMMAND_TIMEOUT": "45s"}).defrag_timeout == 45.0


def test_flags() -> None:
    o = opts("--auto", "--compact", "--move-leader", "--wait", "0s", "--recover-timeout", "10s", "--dry-run",
             "--force", "--continue-on-error", "--quota-backend-bytes", "8GiB", "--disarm-threshold", "0.8")
    assert o.rule is not None and o.rule.text == AUTO_RULE
    assert (o.compact, o.move_leader, o.dry_run, o.force, o.continue_on_error) == (True,) * 5
    assert (o.wait, o.recover_timeout, o.db_quota_bytes, o.disarm_threshold) == (0.0, 10.0, 8 * 1024**3, 0.8)
    assert opts("--rule", "dbSizeFree > 1GiB").rule is not None
    assert opts("--db-quota-bytes", "16MiB").db_quota_bytes == 16 * 1024**2  # the old name still works
    assert opts("--quota-backend-bytes", "0").db_quota_bytes == 0  # etcd's meaning: the 2 GiB default
    assert opts("--quota-backend-bytes=-1").db_quota_bytes == -1  # etcd's meaning: no quota


@pytest.mark.parametrize("argv", [
    ("--wait", "soon"), ("--disarm-threshold", "1.5"), ("--db-quota-bytes", "lots"), ("--rule", "dbQuota"),
    ("--quota-backend-bytes", "-1.5"), ("--quota-backend-bytes", "99999999999TiB"),
])
def test_bad_values_are_usage_errors(argv: tuple[str, ...]) -> None:
    # durations and sizes are refused by the parser itself (exit 2 naming the flag), the rest by the library
    with pytest.raises((UsageError, SystemExit)) as e:
        opts(*argv)
    assert not isinstance(e.value, SystemExit) or e.value.code == 2


def test_reported_quota() -> None:
    def q(version: str, quota: int = 0) -> int | str | None:
        found = reported(pb.StatusResponse(version=version, dbSizeQuota=quota))
        return "not reported" if found is None else found.bytes

    assert q("3.5.1") == "not reported"  # never assumed to be 2 GiB
    assert q("3.4.23", 5) == "not reported"
    assert q("3.6.4", 8 * 1024**3) == 8 * 1024**3
    assert q("3.6.4", 0) == DEFAULT_QUOTA
    assert q("3.6.4", -1) is None  # no quota
    assert q("3.7.0", 1234) == 1234


def test_report_ok() -> None:
    nospace = [AlarmInfo(1, "NOSPACE")]
    assert DefragReport(members=[MemberResult("a", outcome=Outcome.DEFRAGMENTED)]).ok
    assert not DefragReport(members=[MemberResult("a", outcome=Outcome.TIMED_OUT)]).ok
    assert not DefragReport(stopped_reason="x").ok
    assert not DefragReport(alarms_left=nospace).ok
    assert DefragReport(dry_run=True, alarms_left=nospace).ok  # a dry run clears nothing by design
    assert not DefragReport(alarms_left=[AlarmInfo(1, "CORRUPT")]).ok  # only possible with --force
