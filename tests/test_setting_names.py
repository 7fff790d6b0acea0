"""Library messages name settings neutrally; the CLI says its flag, the daemon its configuration key (issue 12)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from etcdwarden.cli.common import CLI_SETTINGS
from etcdwarden.daemon.config import DAEMON_SETTINGS
from etcdwarden.daemon.jobs import JobExecutor
from etcdwarden.daemon.schedule import Due
from etcdwarden.daemon.state import FAILURE, MemoryStateStore
from etcdwarden.defrag.rules import RuleSyntaxError, compile_rule
from etcdwarden.errors import NEUTRAL_SETTINGS, UsageError, name_settings, setting
from etcdwarden.fsutil import Locked, dir_lock
from tests.daemon.helpers import ScriptedRunner, arun, daemon_doc

pytestmark = pytest.mark.unit


def test_every_setting_has_words_a_flag_and_a_key() -> None:
    assert set(CLI_SETTINGS) == set(NEUTRAL_SETTINGS) == set(DAEMON_SETTINGS)
    assert all("--" in v for v in CLI_SETTINGS.values())
    assert not any("--" in v for v in DAEMON_SETTINGS.values())
    with pytest.raises(KeyError):
        setting("no_such_setting")


def test_error_text_is_neutral_and_each_caller_names_its_own() -> None:
    e = UsageError(f"fix {setting('resources')} (nothing was written)")
    assert str(e) == "fix the resource paths (nothing was written)"
    assert e.render(CLI_SETTINGS) == "fix --resources (nothing was written)"
    assert e.render(DAEMON_SETTINGS) == "fix resources (nothing was written)"
    assert name_settings("plain text {not a setting}") == "plain text {not a setting}"


def test_lock_refusal(tmp_path: Path) -> None:
    with dir_lock(tmp_path), pytest.raises(Locked) as ei, dir_lock(tmp_path, wait=0.1):
        pass
    assert "--" not in str(ei.value) and "wait longer for the lock" in str(ei.value)
    assert "--lock-wait DURATION" in ei.value.render(CLI_SETTINGS)
    assert "--lock-wait" not in ei.value.render(DAEMON_SETTINGS)


def test_rule_syntax_error_says_rule_not_the_flag() -> None:
    with pytest.raises(RuleSyntaxError) as ei:
        compile_rule("dbSize >")
    assert str(ei.value).startswith("invalid rule: ") and ei.value.render(CLI_SETTINGS).startswith("invalid --rule: ")


class FailingRunner(ScriptedRunner):
    async def backup(self, job):  # type: ignore[no-untyped-def]
        raise UsageError(f"{setting('encrypt_to')} age1xyz...: not an age (age1...) or SSH public key recipient")


@arun
async def test_the_daemon_records_the_configuration_key(tmp_path: Path) -> None:
    from etcdwarden.daemon.loader import load_config

    p = tmp_path / "d.yaml"
    p.write_text(daemon_doc(tmp_path / "repo", election=False, tick="0.05s", extra=(
        "backups:\n  - name: quick\n    schedule: '0 3 * * *'\n    repository: etcd-backup-pvc\n"
        "    retry: {attempts: 1}\n")))
    cfg = load_config([p])
    store = MemoryStateStore()
    ex = JobExecutor(cfg, FailingRunner(), store, "agent-a")
    job = cfg.backups[0]
    now = dt.datetime.now(dt.UTC)
    rec = await ex.run(job, Due(slot=now, start_at=now), await store.load())
    assert rec.result == FAILURE and rec.error is not None
    assert rec.error.startswith("encryptTo age1xyz...") and "--encrypt-to" not in rec.error, rec.error
