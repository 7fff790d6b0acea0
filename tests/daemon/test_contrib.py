"""contrib/: the sample configurations validate, and the alerts and dashboard use metrics that exist."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
import yaml

from etcdwarden.daemon.config import AgentSection, parse_duration
from etcdwarden.daemon.loader import load_config
from etcdwarden.daemon.metrics import DaemonMetrics, JobInfo, MemberFigures
from etcdwarden.daemon.state import JobState

pytestmark = pytest.mark.unit

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
NOW = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def rendered_metrics() -> str:
    m = DaemonMetrics("a", "0")
    st = JobState(last_success=NOW, last_finished=NOW, last_result="success", last_duration=1.0, last_size=5,
                  last_revision=9, successes=1, details={"defragmented": 1})
    m.view.jobs = {"backup/b": (JobInfo("backup/b", "b", "backup", "r", 3600.0), st),
                   "defrag/d": (JobInfo("defrag/d", "d", "defrag"), st),
                   "drill/n": (JobInfo("drill/n", "n", "drill", "r", 86400.0), st)}
    m.view.members = [MemberFigures("http://x:2379", "m1", True, True, 100, 50, 2**31)]
    m.view.repositories = {"r": (1, 5)}
    m.view.proven = {"r": NOW.timestamp()}
    return m.render().decode()


def test_systemd_sample_config_validates() -> None:
    cfg = load_config([CONTRIB / "systemd" / "daemon.yaml"])
    assert {b.name for b in cfg.backups} == {"hourly", "etcd-recurring-backup"}
    assert [d.name for d in cfg.drills] == ["nightly-drill"] and cfg.drills[0].options.nice == 10
    assert cfg.agent.listen.startswith("127.0.0.1:")
    unit = (CONTRIB / "systemd" / "etcdwarden.service").read_text()
    assert "Type=notify" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    stop = int(re.search(r"TimeoutStopSec=(\d+)", unit).group(1))  # type: ignore[union-attr]
    assert stop > AgentSection().shutdown_grace


def test_kubernetes_manifests_and_configmap(tmp_path: Path) -> None:
    docs = {}
    for path in sorted((CONTRIB / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    cron = docs[("CronJob", "etcdwarden-backup")]
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["daemon", "--once"]
    deploy = docs[("Deployment", "etcdwarden")]
    probes = deploy["spec"]["template"]["spec"]["containers"][0]
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    cm = docs[("ConfigMap", "etcdwarden-config")]
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text)
    cfg = load_config([tmp_path])
    assert [b.name for b in cfg.backups] == ["etcd-recurring-backup"]
    assert [s.name for s in cfg.singles] == ["etcd-single-backup"]
    grace = deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > cfg.agent.shutdown_grace
    # the Service reaches the pods, so the endpoint is TLS with a token; probes stay open (HTTPS, no token)
    assert cfg.agent.tls is not None and cfg.agent.auth is not None and cfg.agent.auth.protect_metrics
    assert probes["livenessProbe"]["httpGet"]["scheme"] == probes["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    mounts = {m["name"]: m["mountPath"] for m in probes["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in deploy["spec"]["template"]["spec"]["volumes"]
               if "secret" in v}
    assert cfg.agent.tls.cert_file.startswith(mounts["tls"] + "/")
    assert cfg.agent.auth.token_file.startswith(mounts["token"] + "/")
    assert docs[("Certificate", "etcdwarden-tls")]["spec"]["secretName"] == secrets["tls"]
    monitor = docs[("ServiceMonitor", "etcdwarden")]["spec"]["endpoints"][0]
    assert monitor["scheme"] == "https" and monitor["bearerTokenSecret"]["name"] == secrets["token"]
    # --once retries within the run: no pod re-run, and its deadline is inside the Job's
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0 and "--deadline" in container["args"]
    deadline = container["args"][container["args"].index("--deadline") + 1]
    assert parse_duration(deadline) + 600 <= job["activeDeadlineSeconds"]
    assert all(b.retry.attempts == 3 for b in cfg.backups)


def test_alerts_and_dashboard_use_existing_metrics() -> None:
    text = rendered_metrics()
    exported = set(re.findall(r"^(etcdwarden_\w+?)(?:\{| )", text, re.MULTILINE))
    rule = yaml.safe_load((CONTRIB / "prometheus" / "prometheusrule.yaml").read_text())
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"EtcdBackupMissing", "EtcdBackupFailed", "EtcdBackupRetrying", "EtcdDatabaseNearQuota",
            "EtcdBackupNotProvenRestorable", "EtcdBackupDrillFailed"} <= alerts
    dash = json.loads((CONTRIB / "grafana" / "etcdwarden-dashboard.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {n for e in exprs for n in re.findall(r"etcdwarden_\w+", e)}
    assert used and used <= exported, used - exported
    assert 'job_name="b"' in text and "job=" not in text  # Prometheus' own job label stays free


def test_member_without_a_quota_exports_no_quota_sample() -> None:
    """etcd >= 3.6 reports a negative quota for "none": a 0 or -1 sample would fire or hide the size alerts."""
    from etcdwarden.defrag.quota import reported

    m = DaemonMetrics("a", "0")
    m.view.members = [MemberFigures("http://x:2379", "m1", True, True, 100, 50, None),
                      MemberFigures("http://y:2379", "m2", True, False, 100, 50, 2**33)]
    text = m.render().decode()
    quota = [line for line in text.splitlines() if line.startswith("etcdwarden_etcd_db_quota_bytes{")]
    assert len(quota) == 1 and 'member="m2"' in quota[0], quota
    from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb

    assert reported(pb.StatusResponse(version="3.6.4", dbSizeQuota=-1)).bytes is None  # type: ignore[union-attr]
    assert reported(pb.StatusResponse(version="3.6.4", dbSizeQuota=0)).bytes == 2 * 1024**3  # type: ignore[union-attr]
    assert reported(pb.StatusResponse(version="3.5.1", dbSizeQuota=0)) is None
