"""Issue 11 item 14: the daemon's configuration and the command line accept the same values, in one grammar.

Every retention, defrag and etcd setting of the DaemonConfig has a flag; for each pair the same text is
accepted by both or refused by both (``minKeep: 0`` was accepted by the daemon and refused by the CLI;
``90`` meant 90 s to the daemon, an error to retention, and ``1d`` an error to the global flags).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from etcdwarden.cli.common import client_config
from etcdwarden.cli.defrag_cmd import options_from_args
from etcdwarden.cli.main import build_parser
from etcdwarden.daemon.loader import ConfigError, load_config
from etcdwarden.errors import UsageError
from tests.cli_helpers import cli
from tests.daemon.helpers import daemon_doc

pytestmark = pytest.mark.unit

BACKUP = ("backups:\n  - name: nightly\n    schedule: '0 3 * * *'\n    repository: etcd-backup-pvc\n"
          "    retention: {{{retention}}}\n")
DEFRAG = "defrag:\n  - name: nightly-defrag\n    schedule: '30 3 * * *'\n    {key}: {value}\n"

# (daemon retention, prune flags, accepted by both?)
RETENTION = [
    ("keepLast: 3, minKeep: 0", ["--max-number", "3", "--min-keep", "0"], True),
    ("keepLast: 3, minKeep: -1", ["--max-number", "3", "--min-keep", "-1"], False),
    ("keepLast: 0", ["--max-number", "0"], False),
    ("keepLast: 3, minKeep: 4", ["--max-number", "3", "--min-keep", "4"], False),
    ("keepWithin: 1d", ["--keep-within", "1d"], True),
    ("keepWithin: 36h", ["--keep-within", "36h"], True),
    ("keepWithin: 90", ["--keep-within", "90"], False),
    ("keepWithin: 0s", ["--keep-within", "0s"], False),
    ("keepWithin: -1d", ["--keep-within=-1d"], False),
    ("maxSizeGiB: 10", ["--max-size-gib", "10"], True),
    ("maxSizeGiB: 0.5", ["--max-size-gib", "0.5"], True),
    ("maxSizeGiB: .inf", ["--max-size-gib", "inf"], False),
    ("maxSizeGiB: .nan", ["--max-size-gib", "nan"], False),
    ("maxSizeGiB: '1e400'", ["--max-size-gib", "1e400"], False),
    ("maxSizeGiB: 1e300", ["--max-size-gib", "1e300"], False),
    ("maxSizeGiB: 0", ["--max-size-gib", "0"], False),
    ("maxSize: 500MiB", ["--max-size", "500MiB"], True),
    ("maxSize: 1.5GB", ["--max-size", "1.5GB"], True),
    ("maxSize: 10", ["--max-size", "10"], False),
    ("maxSize: 0GiB", ["--max-size", "0GiB"], False),
    ("maxSize: 10GiB, maxSizeGiB: 10", ["--max-size", "10GiB", "--max-size-gib", "10"], False),
    ("tiers: {hourly: 24, daily: 7}", ["--keep-hourly", "24", "--keep-daily", "7"], True),
    ("tiers: {hourly: -1, daily: 7}", ["--keep-hourly", "-1", "--keep-daily", "7"], False),
    ("keepLast: 3, incompleteGrace: 0s", ["--max-number", "3", "--incomplete-grace", "0s"], True),
    ("keepLast: 3, incompleteGrace: 2h", ["--max-number", "3", "--incomplete-grace", "2h"], True),
    ("keepLast: 3, incompleteGrace: 24", ["--max-number", "3", "--incomplete-grace", "24"], False),
]

# (defrag key, value, defrag flags, accepted by both?)
DEFRAG_PAIRS = [
    ("wait", "0s", ["--wait", "0s"], True),
    ("wait", "90", ["--wait", "90"], False),
    ("wait", "1m30s", ["--wait", "1m30s"], True),
    ("recoverTimeout", "0s", ["--recover-timeout", "0s"], False),
    ("recoverTimeout", "2m", ["--recover-timeout", "2m"], True),
    ("defragTimeout", "0s", ["--command-timeout", "0s"], False),
    ("defragTimeout", "500ms", ["--command-timeout", "500ms"], True),
    ("defragTimeout", "1d", ["--command-timeout", "1d"], True),
    ("dbQuotaBytes", "8GiB", ["--db-quota-bytes", "8GiB"], True),
    ("dbQuotaBytes", "8589934592", ["--db-quota-bytes", "8589934592"], True),
    ("dbQuotaBytes", "lots", ["--db-quota-bytes", "lots"], False),
    ("dbQuotaBytes", "-1GiB", ["--db-quota-bytes=-1GiB"], False),
]

# (etcd section key, value, global flag, accepted by both?)
ETCD_PAIRS = [
    ("dialTimeout", "2s", "--dial-timeout", True),
    ("dialTimeout", "500ms", "--dial-timeout", True),
    ("dialTimeout", "1m", "--dial-timeout", True),
    ("dialTimeout", "2", "--dial-timeout", False),
    ("dialTimeout", "0s", "--dial-timeout", False),
    ("commandTimeout", "1h30m", "--command-timeout", True),
    ("commandTimeout", "5", "--command-timeout", False),
]


def daemon_accepts(tmp_path: Path, text: str) -> bool:
    p = tmp_path / "d.yaml"
    p.write_text(daemon_doc(tmp_path / "repo", election=False) + text)
    try:
        load_config([p])
    except ConfigError as e:
        assert all(str(x) for x in e.problems)
        return False
    return True


@pytest.mark.parametrize(("retention", "flags", "ok"), RETENTION, ids=[r[0] for r in RETENTION])
def test_retention_keys_and_prune_flags_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str], retention: str,
                                              flags: list[str], ok: bool) -> None:
    assert daemon_accepts(tmp_path, BACKUP.format(retention=retention)) is ok
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    res = cli("backups", "prune", str(repo), "--dry-run", *flags)
    err = res.err + capsys.readouterr().err  # argparse writes its usage errors to sys.stderr
    assert res.code == (0 if ok else 2), err
    assert "Traceback" not in err and (ok or "Error: " in err)


@pytest.mark.parametrize(("key", "value", "flags", "ok"), DEFRAG_PAIRS, ids=[f"{p[0]}={p[1]}" for p in DEFRAG_PAIRS])
def test_defrag_keys_and_flags_agree(tmp_path: Path, key: str, value: str, flags: list[str], ok: bool) -> None:
    assert daemon_accepts(tmp_path, DEFRAG.format(key=key, value=value)) is ok
    argv = ["defrag", *flags]
    try:
        options_from_args(build_parser(argv).parse_args(argv), {})
        cli_ok = True
    except SystemExit as e:
        assert e.code == 2
        cli_ok = False
    except UsageError:
        cli_ok = False
    assert cli_ok is ok


@pytest.mark.parametrize(("key", "value", "flag", "ok"), ETCD_PAIRS, ids=[f"{p[0]}={p[1]}" for p in ETCD_PAIRS])
def test_etcd_section_and_global_flags_agree(tmp_path: Path, key: str, value: str, flag: str, ok: bool) -> None:
    p = tmp_path / "d.yaml"
    doc = daemon_doc(tmp_path / "repo", endpoints=["127.0.0.1:2379"], election=False)
    p.write_text(doc.replace("etcd:\n", f"etcd:\n  {key}: {value}\n"))
    try:
        load_config([p])
        daemon_ok = True
    except ConfigError:
        daemon_ok = False
    assert daemon_ok is ok
    argv = ["endpoint", "status", flag, value]
    args: argparse.Namespace = build_parser(argv).parse_args(argv)
    try:
        client_config(args, {})
        cli_ok = True
    except UsageError as e:
        assert flag in str(e)
        cli_ok = False
    assert cli_ok is ok
    # the same value from the environment
    env = {"ETCDCTL_DIAL_TIMEOUT" if flag == "--dial-timeout" else "ETCDCTL_COMMAND_TIMEOUT": value}
    try:
        client_config(build_parser(["endpoint", "status"]).parse_args(["endpoint", "status"]), env)
        env_ok = True
    except UsageError as e:
        assert next(iter(env)) in str(e)
        env_ok = False
    assert env_ok is ok


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-inf", "-1", "0"])
def test_max_size_gib_non_finite_negative_or_huge_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            value: str) -> None:
    res = cli("backups", "prune", str(tmp_path), "--dry-run", f"--max-size-gib={value}")
    err = res.err + capsys.readouterr().err
    assert res.code == 2 and "Traceback" not in err
    assert "Error: argument --max-size-gib: " in err and value in err and "--max-size 10GiB" in err


def test_a_bare_number_suggests_the_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = cli("backups", "prune", str(tmp_path), "--keep-within", "90")
    assert res.code == 2 and "--keep-within: 90 has no unit; did you mean 90s?" in capsys.readouterr().err
    res = cli("backups", "prune", str(tmp_path), "--max-size", "10")
    assert res.code == 2 and "--max-size: 10 has no unit; did you mean 10GiB" in capsys.readouterr().err
    assert not daemon_accepts(tmp_path, BACKUP.format(retention="keepWithin: 90"))
    p = tmp_path / "d.yaml"
    p.write_text(daemon_doc(tmp_path / "repo", election=False) + BACKUP.format(retention="keepWithin: 90"))
    with pytest.raises(ConfigError, match=r"backups\[0\]\.retention\.keepWithin: 90 has no unit; did you mean 90s\?"):
        load_config([p])


def test_max_size_in_bytes_and_gib_give_the_same_cap(tmp_path: Path) -> None:
    p = tmp_path / "d.yaml"
    for retention in ("maxSizeGiB: 1.5", "maxSize: 1536MiB"):
        p.write_text(daemon_doc(tmp_path / "repo", election=False) + BACKUP.format(retention=retention))
        (job,) = load_config([p]).backups
        assert job.retention is not None and job.retention.size_cap == 1536 * 1024**2


@pytest.mark.parametrize(("option", "value", "ok"), [
    ("retry_timeout", "60s", True), ("retry_timeout", "60", False), ("connect_timeout", "0s", False),
    ("part_size", "16MiB", True), ("part_size", "16777216", False), ("max_retries", "3", True),
    ("max_retries", "-1", False), ("request_timeout", ".inf", False), ("part_size", ".nan", False),
])
def test_repository_options_use_the_same_grammar(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str,
                                                 value: str, ok: bool) -> None:
    """The object-store options read from --repository-config and from a daemon repository's options."""
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"repository:\n  {option}: {value}\n")
    repo = tmp_path / "r"
    repo.mkdir()
    res = cli("backups", "list", str(repo), "--repository-config", str(cfg))
    assert res.code == (0 if ok else 2), res.err
    assert ok or f"repository option {option!r}" in res.err
    camel = "".join(w if i == 0 else w.title() for i, w in enumerate(option.split("_")))
    repo_item = (f"repositories:\n  - name: s3\n    url: s3://bucket/etcd\n    options: {{{camel}: {value}, "
                 "endpoint: 'http://127.0.0.1:9'}\n")
    p = tmp_path / "d.yaml"
    p.write_text(daemon_doc(tmp_path / "repo", election=False).replace("repositories:\n", repo_item))
    try:
        load_config([p])
        daemon_ok = True
    except ConfigError as e:
        assert f"repositories[0].options: repository option {camel!r}" in str(e) or "unknown" not in str(e), e
        daemon_ok = False
    assert daemon_ok is ok
