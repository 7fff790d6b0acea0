"""The configuration: the seeds' CRs load unchanged; every bad field is reported at once, with its path."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from etcdwarden.daemon.loader import ConfigError, load_config
from tests.cli_helpers import cli
from tests.daemon.helpers import (
    SEED_RECURRING,
    SEED_RECURRING_NUMBER,
    SEED_RECURRING_SIZE,
    SEED_SINGLE,
    daemon_doc,
)

pytestmark = pytest.mark.unit


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(paths: list[Path]) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_config(paths)
    return [str(p) for p in ei.value.problems]


def test_seed_crs_load_unchanged(tmp_path: Path) -> None:
    text = "---\n".join([daemon_doc(tmp_path / "repo"), SEED_RECURRING, SEED_RECURRING_NUMBER,
                         SEED_RECURRING_SIZE, SEED_SINGLE])
    cfg = load_config([write(tmp_path, "all.yaml", text)])
    by_name = {b.name: b for b in cfg.backups}
    rec = by_name["etcd-recurring-backup"]
    assert rec.schedule is not None and rec.schedule.expr == "20 4 * * *" and rec.schedule.tz_name == "UTC"
    assert rec.repository == "etcd-backup-pvc" and rec.enabled
    # OpenShift's default retention: RetentionNumber, 15 backups
    assert rec.retention is not None and rec.retention.keep_last == 15 and rec.retention.min_keep == 1
    num = by_name["etcd-recurring-backup-number"].retention
    assert num is not None and num.keep_last == 5 and num.max_size_gib is None
    size = by_name["etcd-recurring-backup-size"].retention
    assert size is not None and size.max_size_gib == 20.0 and size.keep_last is None
    (single,) = cfg.singles
    assert (single.name, single.namespace, single.repository) == ("etcd-single-backup", "openshift-etcd",
                                                                 "etcd-backup-pvc")
    assert single.key == "single/openshift-etcd/etcd-single-backup"
    nxt = rec.schedule.next_after(dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC))
    assert nxt == dt.datetime(2024, 5, 2, 4, 20, tzinfo=dt.UTC)


def test_crs_in_extra_files_directory_and_include(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    write(conf, "00-daemon.yaml", daemon_doc(tmp_path / "repo") + "include: [../crs/*.yaml]\n")
    crs = tmp_path / "crs"
    crs.mkdir()
    write(crs, "recurring.yaml", SEED_RECURRING)
    extra = write(tmp_path, "single.yml", SEED_SINGLE)
    cfg = load_config([conf, extra])
    assert [b.name for b in cfg.backups] == ["etcd-recurring-backup"]
    assert [s.name for s in cfg.singles] == ["etcd-single-backup"]


def test_kubernetes_list_and_empty_schedule(tmp_path: Path) -> None:
    items = SEED_RECURRING.replace('"20 4 * * *"', '""')
    lst = "apiVersion: v1\nkind: List\nitems:\n" + "".join(
        ("  - " if i == 0 else "    ") + line + "\n" for i, line in enumerate(items.splitlines()))
    cfg = load_config([write(tmp_path, "d.yaml", daemon_doc(tmp_path / "r") + "---\n" + lst)])
    (b,) = cfg.backups
    assert not b.enabled and cfg.scheduled == []
    assert any("no recurring backups" in n for n in cfg.notes)


@pytest.mark.parametrize(("snippet", "expected"), [
    ("backups:\n  - name: b\n    schedule: '0 3 * * *'\n    repository: etcd-backup-pvc\n    colour: blue\n",
     "d.yaml:21: document 1 (DaemonConfig): backups[0].colour: unknown field 'colour'"),
    ("backups:\n  - name: b\n    schedule: '0 25 * * *'\n    repository: etcd-backup-pvc\n",
     "backups[0].schedule: invalid cron schedule '0 25 * * *': hour field '25' is not valid"),
    ("backups:\n  - name: b\n    schedule: '0 3 * *'\n    repository: etcd-backup-pvc\n",
     "expected 5 fields"),
    ("backups:\n  - name: b\n    schedule: '0 0 30 2 *'\n    repository: etcd-backup-pvc\n",
     "never fires"),
    ("backups:\n  - name: b\n    schedule: '0 3 * * *'\n    timeZone: Mars/Olympus\n    repository: etcd-backup-pvc\n",
     "backups[0].timeZone: unknown time zone 'Mars/Olympus'"),
    ("backups:\n  - name: b\n    schedule: '0 3 * * *'\n    repository: s3-offsite\n",
     "backups[0].repository: unknown repository 's3-offsite' (defined in the DaemonConfig: etcd-backup-pvc)"),
    ("backups:\n  - name: b\n    schedule: '*/5 * * * *'\n    jitter: 10m\n    repository: etcd-backup-pvc\n",
     "backups[0].jitter: jitter 600s is not shorter than the schedule's interval (300s)"),
    ("backups:\n  - name: b\n    schedule: '0 3 * * *'\n    repository: etcd-backup-pvc\n    retention: {}\n",
     "backups[0].retention: retention needs at least one of keepLast"),
    ("defrag:\n  - name: d\n    schedule: '@weekly'\n    rule: 'dbSize >'\n", "defrag[0].rule: invalid rule"),
])
def test_one_clear_message_each(tmp_path: Path, snippet: str, expected: str) -> None:
    path = write(tmp_path, "d.yaml", daemon_doc(tmp_path / "r") + snippet)
    found = problems([path])
    assert len(found) == 1, found
    assert expected in found[0]
    res = cli("config", "validate", str(path))
    assert res.code == 2 and expected in res.err


def test_cr_problems_point_at_cr_paths(tmp_path: Path) -> None:
    bad_tz = SEED_RECURRING.replace('"UTC"', '"Europe/Berln"')
    bad_repo = SEED_SINGLE.replace("etcd-backup-pvc", "etcd-backup-pvx")
    bad_type = SEED_RECURRING_SIZE.replace("RetentionSize\n", "RetentionCount\n", 1)
    text = "---\n".join([daemon_doc(tmp_path / "r"), bad_tz, bad_repo, bad_type])
    found = problems([write(tmp_path, "c.yaml", text)])
    assert len(found) == 3, found
    assert "(Backup etcd-recurring-backup): spec.etcd.timeZone: unknown time zone 'Europe/Berln'" in found[0]
    assert "did you mean Europe/Berlin" in found[0]
    assert "(EtcdBackup etcd-single-backup): spec.pvcName: unknown repository 'etcd-backup-pvx'" in "\n".join(found)
    assert "spec.etcd.retentionPolicy.retentionType" in "\n".join(found)


def test_all_errors_at_once_with_paths_and_lines(tmp_path: Path) -> None:
    text = daemon_doc(tmp_path / "r") + (
        "agent:\n  timeZone: Nowhere/City\n"  # duplicate 'agent' key too
        "backups:\n"
        "  - name: hourly\n    schedule: '61 * * * *'\n    repository: etcd-backup-pvc\n    schedul: x\n"
        "  - name: daily\n    schedule: '0 3 * * *'\n    repository: nope\n"
    )
    text = text.replace("  - name: etcd-backup-pvc\n", "  - name: etcd-backup-pvc\n    password: hunter2\n")
    cr = SEED_SINGLE.replace("etcd-backup-pvc", "missing")
    path = write(tmp_path, "multi.yaml", text + "---\n" + cr + "---\napiVersion: v1\nkind: ConfigMap\n")
    res = cli("config", "validate", str(path))
    assert res.code == 2
    err = res.err
    for needle in [
        "duplicate key 'agent'",
        "agent.timeZone: unknown time zone 'Nowhere/City'",
        "repositories[0].password: unknown field 'password'",
        "backups[0].schedule: invalid cron schedule '61 * * * *'",
        "backups[0].schedul: unknown field 'schedul' (did you mean 'schedule'?)",
        "backups[1].repository: unknown repository 'nope'",
        "spec.pvcName: unknown repository 'missing'",
        "v1 ConfigMap is not a document etcdwarden reads",
    ]:
        assert needle in err, (needle, err)
    assert "8 problems" in err
    line = text.splitlines().index("    schedule: '61 * * * *'") + 1
    assert f"multi.yaml:{line}: document 1 (DaemonConfig): backups[0].schedule" in err
    assert "hunter2" not in err


def test_missing_daemon_config_and_files(tmp_path: Path) -> None:
    only_cr = write(tmp_path, "cr.yaml", SEED_RECURRING)
    assert any("no etcdwarden.io/v1alpha1 DaemonConfig document" in p for p in problems([only_cr]))
    assert any("no such file" in p for p in problems([tmp_path / "absent.yaml"]))
    broken = write(tmp_path, "broken.yaml", "apiVersion: [\n")
    assert any("broken.yaml:2: not valid YAML" in p for p in problems([broken]))
    wrong_api = write(tmp_path, "api.yaml", daemon_doc(tmp_path / "r") + "---\n"
                      + SEED_RECURRING.replace("config.openshift.io/v1alpha1", "config.openshift.io/v1"))
    assert any("kind Backup needs apiVersion config.openshift.io/v1alpha1" in p for p in problems([wrong_api]))


def test_validate_ok_and_json(tmp_path: Path) -> None:
    path = write(tmp_path, "ok.yaml", daemon_doc(tmp_path / "r") + "---\n" + SEED_RECURRING)
    res = cli("config", "validate", str(path))
    assert res.code == 0, res.err
    assert "configuration OK" in res.out and "etcd-recurring-backup: 20 4 * * * (UTC), next" in res.out
    res = cli("-w", "json", "config", "validate", str(path))
    assert res.code == 0 and '"etcd-recurring-backup"' in res.out


def test_password_sources_never_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from etcdwarden.cli.daemon_cmd import daemon_client_config
    from etcdwarden.daemon.config import EtcdSection

    pw = tmp_path / "pw"
    pw.write_text("s3cret-from-file\n")
    section = EtcdSection.model_validate({"endpoints": ["127.0.0.1:1"], "user": "root", "passwordFile": str(pw)})
    ccfg = daemon_client_config(argparse.Namespace(), section)
    assert ccfg.password == "s3cret-from-file" and "s3cret" not in repr(ccfg)
    monkeypatch.setenv("MY_ETCD_PW", "from-env")
    section = EtcdSection.model_validate({"endpoints": ["127.0.0.1:1"], "user": "root", "passwordEnv": "MY_ETCD_PW"})
    assert daemon_client_config(argparse.Namespace(), section).password == "from-env"
    # a flag wins over the file
    ns = argparse.Namespace(endpoints="127.0.0.1:9")
    assert daemon_client_config(ns, section).endpoints[0].port == 9


def test_log_lines_are_json_and_mask_secrets() -> None:
    import io
    import json
    import logging

    from etcdwarden.daemon import logs

    stream = io.StringIO()
    with logs.configured("info", stream, {"hunter2"}):
        logging.getLogger("etcdwarden.test").info("connecting with %s", "hunter2",
                                                  extra={"job": "x", "password": "p", "detail": {"token": "t"}})
    line = json.loads(stream.getvalue())
    assert line["msg"] == "connecting with ***" and line["job"] == "x" and line["level"] == "info"
    assert line["password"] == "***" and line["detail"] == {"token": "***"}
    assert "hunter2" not in stream.getvalue()


def test_config_summary_hides_url_credentials(tmp_path: Path) -> None:
    text = daemon_doc(tmp_path / "r").replace(f"file://{tmp_path / 'r'}", "s3://AKID:SECRETKEY@minio:9000/bkp")
    cfg = load_config([write(tmp_path, "s.yaml", text)])
    assert "SECRETKEY" not in str(cfg.summary()) and "s3://***@minio:9000/bkp" in str(cfg.summary())


def test_repository_options_are_checked(tmp_path: Path) -> None:
    text = daemon_doc(tmp_path / "r").replace(
        f"    url: file://{tmp_path / 'r'}\n",
        "    url: s3://bkp/etcd\n    options: {endpoint: 'http://127.0.0.1:8333', allowHttp: true, colour: red}\n")
    found = problems([write(tmp_path, "o.yaml", text)])
    assert len(found) == 1 and "repositories[0].options: unknown repository option 'colour'" in found[0]


def test_password_file_that_is_not_a_readable_text_file_is_a_clear_error(tmp_path: Path) -> None:
    import argparse
    import os

    from etcdwarden.cli.daemon_cmd import daemon_client_config
    from etcdwarden.daemon.config import EtcdSection
    from etcdwarden.errors import UsageError

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # would block a plain read forever
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00pw")
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * (1 << 20))
    for path, why in ((fifo, "not a regular file"), (binary, "not UTF-8"), (tmp_path, "not a regular file"),
                      (huge, "larger than"), (tmp_path / "missing", "No such file")):
        section = EtcdSection.model_validate({"endpoints": ["127.0.0.1:1"], "user": "root",
                                              "passwordFile": str(path)})
        with pytest.raises(UsageError) as ei:
            daemon_client_config(argparse.Namespace(), section)
        assert why in str(ei.value) and f"etcd.passwordFile {path}" in str(ei.value), (path, ei.value)
