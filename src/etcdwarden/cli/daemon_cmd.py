"""``daemon --config FILE`` (scheduled backups, retention, defrag, metrics) and ``config validate FILE``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from etcdwarden.cli.common import client_config, duration_arg
from etcdwarden.cli.output import Output
from etcdwarden.daemon import logs
from etcdwarden.daemon.config import EtcdSection, check_listen, exposure_problem
from etcdwarden.daemon.loader import load_config
from etcdwarden.daemon.service import Daemon, OnceReport
from etcdwarden.daemon.spec import DaemonConfig
from etcdwarden.errors import EXIT_FAILED, EXIT_OK, UsageError
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.units import format_duration

_EPILOG = """\
The configuration is YAML: one etcdwarden.io/v1alpha1 DaemonConfig document plus, in the same or other
files, OpenShift Backup (config.openshift.io/v1alpha1) and EtcdBackup (operator.openshift.io/v1alpha1)
resources as they are; their pvcName names a repository of the DaemonConfig. --config may be given more
than once and may name a directory (its *.yaml files, in name order).

Settings of the etcd section override ETCDCTL_* variables; command-line flags override both.
Durations and sizes are written as on the command line: 90s, 15m, 1h30m, 7d; 500MiB, 10GiB.

A job with no recorded run waits for its first slot (logged in its time zone); only a backup whose
repository holds no complete backup of this cluster runs at once. After downtime a missed backup slot
runs once (catchUp); a missed defrag or key rotation waits for its next slot.

A failed scheduled backup is retried before its next slot (retry: attempts 3, backoff 5m doubling up to
maxBackoff 30m, by default; agent.retry and each backup's retry change it). With --once the retries
happen within the run, none starting after --deadline.

HTTP is plain and on loopback by default. A non-loopback agent.listen (or --listen) needs agent.tls
(certFile, keyFile) or an explicit agent.insecureHttp: true; agent.auth.tokenFile requires a bearer
token on /api/* (and on /metrics with protectMetrics). SIGHUP re-reads the configuration and those files.
"""

_VALIDATE_EPILOG = """\
The files hold one etcdwarden.io/v1alpha1 DaemonConfig document plus, in the same or other files, OpenShift
Backup (config.openshift.io/v1alpha1) and EtcdBackup (operator.openshift.io/v1alpha1) resources as they are.
Durations and sizes are written as on the command line: 90s, 15m, 1h30m, 7d; 500MiB, 10GiB (a bare number
is refused with a hint, except 0 and settings named in bytes).

Example: etcdwarden config validate /etc/etcdwarden/daemon.yaml /etc/etcdwarden/conf.d
"""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("daemon", parents=parents, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="run scheduled backups, retention and defrag; serve /healthz, /readyz, /metrics",
                       description="Run the etcdwarden agent: elect one leader among the agents through etcd, "
                       "run due jobs on the leader, serve health, metrics and the backup catalog over HTTP.")
    p.add_argument("--config", action="append", required=True, metavar="FILE", help="configuration file or directory")
    p.add_argument("--once", action="store_true",
                   help="run every job that is due (and pending single backups) once, then exit "
                        "(for a Kubernetes CronJob); exit 1 if a job failed")
    p.add_argument("--deadline", metavar="DURATION", default="30m", type=duration_arg(),
                   help="with --once: start no retry of a failed backup later than this after the run began "
                        "(default 30m; keep it below the CronJob's activeDeadlineSeconds)")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="HTTP address (default: agent.listen, 127.0.0.1:9796); a non-loopback one needs agent.tls "
                        "or agent.insecureHttp")
    p.add_argument("--agent-name", metavar="NAME", help="this agent's name (default: agent.name or the host name)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: agent.logLevel")
    p.set_defaults(func=cmd_daemon)

    c = sub.add_parser("config", help="check daemon configuration files",
                       description="Check daemon configuration files without running the daemon.")
    csub = c.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    v = csub.add_parser("validate", epilog=_VALIDATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                        help="validate daemon configuration files; report every problem with its path",
                        description="Read and check the files `etcdwarden daemon --config` would read, offline\n"
                        "(etcd is not contacted), and report every problem at once with its file, line and path.\n"
                        "Exit 0 and a summary of the jobs and their next slots when valid; exit 2 when not.")
    v.add_argument("files", nargs="+", metavar="FILE", help="configuration file or directory (its *.yaml files)")
    v.add_argument("-w", "--write-out", dest="write_out", choices=["table", "json"], default=argparse.SUPPRESS,
                   help="table (default) or json: the resolved configuration (no secrets)")
    v.set_defaults(func=cmd_validate)


MAX_PASSWORD_FILE = 64 << 10


def _read_password_file(name: str) -> str:
    """The password in ``name``: a regular file (a FIFO or device would block or never end), UTF-8."""
    label = f"etcd.passwordFile {name}"
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise UsageError(f"{label}: {e.strerror or e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{label}: not a regular file; name the file that holds the password")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_PASSWORD_FILE + 1)
        except OSError as e:
            raise UsageError(f"{label}: {e.strerror or e}") from None
    if len(data) > MAX_PASSWORD_FILE:
        raise UsageError(f"{label}: larger than {MAX_PASSWORD_FILE // 1024} KiB; is this the password file?")
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise UsageError(f"{label}: not UTF-8 text; write the password as UTF-8") from None


def read_password(etcd: EtcdSection, environ: dict[str, str] | os._Environ[str]) -> str | None:
    if etcd.password_file:
        return _read_password_file(etcd.password_file)
    if etcd.password_env:
        if etcd.password_env not in environ:
            raise UsageError(f"etcd.passwordEnv: the environment variable {etcd.password_env} is not set")
        return environ[etcd.password_env]
    return None


def daemon_client_config(args: argparse.Namespace, etcd: EtcdSection) -> ClientConfig:
    """Flags > the config's etcd section > ETCDCTL_* > defaults."""
    ns = argparse.Namespace(**vars(args))

    def fill(dest: str, value: object) -> None:
        if value is not None and getattr(ns, dest, None) is None:
            setattr(ns, dest, value)

    fill("endpoints", ",".join(etcd.endpoints) if etcd.endpoints else None)
    fill("cacert", etcd.cacert)
    fill("cert", etcd.cert)
    fill("key", etcd.key)
    fill("user", etcd.user)
    fill("password", read_password(etcd, os.environ))
    fill("insecure_skip_tls_verify", True if etcd.insecure_skip_tls_verify else None)
    fill("dial_timeout", format_duration(etcd.dial_timeout) if etcd.dial_timeout is not None else None)
    fill("command_timeout", format_duration(etcd.command_timeout) if etcd.command_timeout is not None else None)
    return client_config(ns)


def _secrets(cfg: DaemonConfig, ccfg: ClientConfig) -> set[str]:
    out = {ccfg.password} if ccfg.password else set()
    for repo in cfg.repositories.values():
        out |= {v for k, v in repo.options.items() if logs.is_secret_name(k) and isinstance(v, str) and v}
        password = urlparse(repo.url).password if "://" in repo.url else None
        if password:
            out.add(password)
    return out


def cmd_daemon(args: argparse.Namespace, out: Output) -> int:
    paths = [Path(p) for p in args.config]
    deadline = float(args.deadline)
    cfg = load_config(paths)
    if args.listen and not args.once:
        try:
            check_listen(args.listen)
        except ValueError as e:
            raise UsageError(f"--listen: {e}") from None
        problem = exposure_problem(args.listen, cfg.agent.tls is not None, cfg.agent.insecure_http, "--listen")
        if problem:
            raise UsageError(problem)
    ccfg = daemon_client_config(args, cfg.etcd)
    async def go() -> OnceReport | None:
        async with EtcdClient(ccfg) as client:
            d = Daemon(cfg, client, agent=args.agent_name, listen=args.listen, reload=lambda: load_config(paths))
            d.install_signal_handlers()
            if args.once:
                return await d.run_once(deadline)
            await d.run()
            return None

    with logs.configured(args.log_level or cfg.agent.log_level, out.err, _secrets(cfg, ccfg)):
        for note in cfg.notes:
            logging.getLogger("etcdwarden.daemon").info("%s", note)
        report = asyncio.run(go())
    if report is None:
        return EXIT_OK
    if out.is_json:
        out.json(report.as_json())
    else:
        if report.note:
            out.info(report.note)
        for r in report.records:
            extra = f": {r.error}" if r.error else ""
            attempt = f" (attempt {r.attempt}/{r.attempts})" if r.attempts > 1 else ""
            then = f"; retry at {r.retry_at.isoformat()}" if r.retry_at else (
                f"; {r.detail['then']}" if r.detail.get("then") and r.attempts > 1 else "")
            out.line(f"{r.kind} {r.name}: {r.result}{attempt} in {r.duration:.1f}s{extra}{then}")
            prune = r.detail.get("prune")
            if isinstance(prune, dict) and not prune.get("ok"):
                out.warn(f"{r.name}: retention failed: {prune.get('error')}")
    sys.stdout.flush()
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_validate(args: argparse.Namespace, out: Output) -> int:
    cfg = load_config([Path(f) for f in args.files])
    summary = cfg.summary()
    if out.is_json:
        out.json(summary)
        return EXIT_OK
    out.line(f"configuration OK ({len(cfg.files)} file(s)): {len(cfg.repositories)} repositories, "
             f"{len(cfg.backups)} scheduled backup(s), {len(cfg.singles)} single backup(s), "
             f"{len(cfg.defrags)} defrag job(s)")
    for kind in ("backups", "defrag"):
        for j in summary[kind]:  # type: ignore[attr-defined]
            when = f"next {j['next']}" if j.get("next") else "disabled"
            retry = j.get("retry") or {}
            tries = f", up to {retry['attempts']} attempts" if retry.get("attempts", 1) > 1 else ""
            out.line(f"  {j['kind']} {j['name']}: {j.get('schedule')} ({j.get('timeZone')}), {when}{tries}")
    for s in summary["singleBackups"]:  # type: ignore[attr-defined]
        out.line(f"  single backup {s['name']} -> {s['repository']}")
    for n in cfg.notes:
        out.info(f"note: {n}")
    return EXIT_OK
