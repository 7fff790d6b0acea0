"""Each member's backend quota (``--quota-backend-bytes``), from a source that actually knows it.

The NOSPACE alarm may only be disarmed when every member's database is below ``0.9 × quota`` — so
the quota must be *known*, never assumed. etcd 3.4/3.5 do not report it; the sources, strongest first:

1. the member itself: etcd ≥ 3.6 reports ``dbSizeQuota`` in Status;
2. the member's own command line, when it runs on this host: ``/proc/PID/cmdline`` of the etcd
   process whose ``--name`` and ``--advertise-client-urls`` match the member (with its environment
   ``ETCD_QUOTA_BACKEND_BYTES`` and its ``--config-file``, which etcd prefers over both);
3. its static pod manifest (kubeadm: ``/etc/kubernetes/manifests/etcd.yaml``), when the manifest's
   ``--advertise-client-urls`` are the member's;
4. what the operator says: ``--quota-backend-bytes`` (daemon: ``dbQuotaBytes`` of the defrag job).

A command line or manifest that sets no quota means etcd's default (2 GiB): that is known too. A value
follows etcd's meaning: 0 is the 2 GiB default, a negative value disables the quota.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from etcdwarden.errors import UsageError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb

DEFAULT_QUOTA = 2 * 1024**3  # etcd's DefaultQuotaBytes when --quota-backend-bytes is 0
QUOTA_FLAG = "--quota-backend-bytes"
ENV_NAME = "ETCD_QUOTA_BACKEND_BYTES"
HINT = (f"pass {QUOTA_FLAG} with the value the members run with (in the daemon: dbQuotaBytes of the defrag "
        "job)")
PROC = Path("/proc")
_MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Quota:
    """A member's quota: ``bytes`` None means the quota is disabled; ``source`` says who told us."""

    bytes: int | None
    source: str

    def describe(self) -> str:
        return f"no quota ({self.source})" if self.bytes is None else f"{self.bytes}-byte quota ({self.source})"


def effective(value: int) -> int | None:
    """etcd's meaning of a ``--quota-backend-bytes`` value: 0 → 2 GiB, negative → no quota."""
    if value == 0:
        return DEFAULT_QUOTA
    return value if value > 0 else None


def parse_quota(text: str) -> int:
    """A ``--quota-backend-bytes`` value: bytes, ``8GiB``, or a negative integer (no quota).

    Raises :class:`UsageError`.
    """
    from etcdwarden import units

    t = text.strip()
    if re.fullmatch(r"-\d{1,19}", t):
        return int(t)
    try:
        n = units.parse_size(t, bare_bytes=True)
    except units.UnitError as e:
        raise UsageError(f"invalid {QUOTA_FLAG}: {e}") from None
    if n >= 2**63:
        raise UsageError(f"invalid {QUOTA_FLAG} {text!r}: larger than etcd accepts")
    return n


def reported(status: pb.StatusResponse) -> Quota | None:
    """The quota the member reports (etcd ≥ 3.6), or None when its version does not report it."""
    m = re.match(r"^(\d+)\.(\d+)", status.version or "")
    if m is None or (int(m.group(1)), int(m.group(2))) < (3, 6):
        return None
    return Quota(effective(int(status.dbSizeQuota)), f"reported by etcd {status.version}")


# -- command lines -------------------------------------------------------------------------------


def _flag(args: Sequence[str], name: str) -> str | None:
    """The last value of a Go flag (``-name v``, ``--name v``, ``--name=v``), as the flag package keeps it."""
    value: str | None = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            break
        bare = a[2:] if a.startswith("--") else a[1:] if a.startswith("-") else None
        if bare is not None:
            if bare == name and i + 1 < len(args):
                value = args[i + 1]
                i += 1
            elif bare.startswith(name + "="):
                value = bare[len(name) + 1:]
        i += 1
    return value


def _go_int(text: str) -> int | None:
    t = text.strip().replace("_", "")
    try:
        return int(t, 0)
    except ValueError:
        return None


def _urls(text: str | None) -> set[str]:
    return {u.strip().rstrip("/") for u in (text or "").split(",") if u.strip()}


def _quota_in_config(path: Path, shown: str, where: str) -> Quota | None:
    """``quota-backend-bytes`` of an etcd ``--config-file`` (absent → the default); None if unreadable."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_CONFIG_BYTES + 1)
        if len(raw) > _MAX_CONFIG_BYTES:
            return None
        doc: Any = yaml.safe_load(raw)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        return None
    value = doc.get("quota-backend-bytes", 0)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return Quota(effective(value), f"{shown}, the --config-file of {where}")


def quota_of_command(args: Sequence[str], env: Mapping[str, str] | None, where: str,
                     config_root: Path | None = None, config_cwd: Path | None = None) -> Quota | None:
    """The quota an etcd started with ``args`` (and environment ``env``, None if unknown) runs with.

    A ``--config-file`` is read below ``config_root`` (relative paths below ``config_cwd``); without a
    root it cannot be read. None when the quota cannot be told.
    """
    config = _flag(args, "config-file")
    if config is not None:  # etcd ignores the other flags and the environment then
        base = config_root if config.startswith("/") else config_cwd
        if base is None or not config:
            return None
        return _quota_in_config(base / config.lstrip("/"), config, where)
    value = _flag(args, "quota-backend-bytes")
    if value is not None:
        n = _go_int(value)
        return None if n is None else Quota(effective(n), f"{QUOTA_FLAG} on the command line of {where}")
    if env is None:
        return None
    if ENV_NAME in env:
        n = _go_int(env[ENV_NAME])
        return None if n is None else Quota(effective(n), f"{ENV_NAME} of {where}")
    return Quota(DEFAULT_QUOTA, f"etcd's default: no {QUOTA_FLAG} on the command line of {where}")


@dataclass(frozen=True)
class LocalEtcd:
    """An etcd process of this host: its ``--name``, advertised client URLs and quota (if it can be told)."""

    pid: int
    name: str
    client_urls: frozenset[str]
    quota: Quota | None


def _read_nul_list(path: Path) -> list[str] | None:
    try:
        return [a.decode(errors="replace") for a in path.read_bytes().split(b"\0") if a]
    except OSError:
        return None


def local_etcds(proc: Path = PROC) -> list[LocalEtcd]:
    """Every process of this host whose program is ``etcd``."""
    found: list[LocalEtcd] = []
    try:
        entries = list(proc.iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit():
            continue
        args = _read_nul_list(entry / "cmdline")
        if not args or os.path.basename(args[0]) != "etcd":
            continue
        environ = _read_nul_list(entry / "environ")
        wanted = (ENV_NAME, "ETCD_NAME", "ETCD_ADVERTISE_CLIENT_URLS")  # nothing else is kept (secrets)
        env = None if environ is None else {k: v for k, _, v in (e.partition("=") for e in environ) if k in wanted}
        where = f"the local etcd PID {entry.name}"
        name = _flag(args[1:], "name")
        if name is None and env is not None:
            name = env.get("ETCD_NAME")
        urls = _flag(args[1:], "advertise-client-urls")
        if urls is None and env is not None:
            urls = env.get("ETCD_ADVERTISE_CLIENT_URLS")
        found.append(LocalEtcd(int(entry.name), name or "default", frozenset(_urls(urls)),
                               quota_of_command(args[1:], env, where, entry / "root", entry / "cwd")))
    return found


# -- static pod manifests ------------------------------------------------------------------------


def manifest_quotas(path: Path) -> list[tuple[frozenset[str], Quota | None]]:
    """(advertised client URLs, quota) of each etcd container of a pod manifest; [] if unreadable."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_CONFIG_BYTES + 1)
        if len(raw) > _MAX_CONFIG_BYTES:
            return []
        doc: Any = yaml.safe_load(raw)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return []
    spec = doc.get("spec") if isinstance(doc, dict) else None
    containers = spec.get("containers") if isinstance(spec, dict) else None
    out: list[tuple[frozenset[str], Quota | None]] = []
    for c in containers if isinstance(containers, list) else []:
        if not isinstance(c, dict):
            continue
        command = c.get("command") or []
        cargs = c.get("args") or []
        if not isinstance(command, list) or not isinstance(cargs, list):
            continue
        args = [str(x) for x in [*command, *cargs]]
        urls = _urls(_flag(args, "advertise-client-urls"))
        if not urls:
            continue
        entries = [e for e in (c.get("env") or []) if isinstance(e, dict) and isinstance(e.get("name"), str)]
        env: dict[str, str] | None = {str(e["name"]): str(e["value"]) for e in entries if "value" in e}
        if c.get("envFrom") or any(e["name"] == ENV_NAME and "value" not in e for e in entries):
            env = None  # the quota may come from a secret or a config map: not readable here
        # a --config-file names a path inside the container: not read from here
        out.append((frozenset(urls), quota_of_command(args, env, f"the etcd static pod manifest {path}")))
    return out


# -- choosing -------------------------------------------------------------------------------------


class QuotaFinder:
    """Finds each member's quota: its Status, this host's etcd processes and manifest, then the operator's
    value. Local sources are read once per run (:meth:`load`)."""

    def __init__(self, configured: int | None, manifest: Path | None = None, proc: Path | None = PROC) -> None:
        self.configured = configured
        self.manifest = manifest
        self.proc = proc
        self.processes: list[LocalEtcd] = []
        self.manifests: list[tuple[frozenset[str], Quota | None]] = []
        self.notes: list[str] = []

    def load(self) -> None:
        self.processes = local_etcds(self.proc) if self.proc is not None else []
        self.manifests = manifest_quotas(self.manifest) if self.manifest is not None else []

    def observed(self, member: pb.Member | None) -> tuple[bool, Quota | None]:
        """(found, quota) from this host: the member's etcd process first, then its manifest."""
        if member is None:
            return False, None
        urls = _urls(",".join(member.clientURLs))
        if not urls:
            return False, None
        matches = [p.quota for p in self.processes if p.name == member.name and p.client_urls & urls]
        matches += [q for murls, q in self.manifests if murls & urls]
        known = [q for q in matches if q is not None]
        return bool(matches), known[0] if known else None

    def find(self, member: pb.Member | None, status: pb.StatusResponse | None) -> Quota | None:
        """The member's quota, or None when no source knows it."""
        name = (member.name if member is not None else "") or "a member"
        found = reported(status) if status is not None else None
        if found is None:
            seen, observed = self.observed(member)
            found = observed if seen else None
        if found is None:
            if self.configured is None:
                return None
            return Quota(effective(self.configured), f"{QUOTA_FLAG} {self.configured}")
        if self.configured is not None and effective(self.configured) != found.bytes:
            note = (f"{QUOTA_FLAG} {self.configured} not used for {name}: it runs with a "
                    f"{found.describe()}")
            if note not in self.notes:
                self.notes.append(note)
        return found


def unknown_reason(member: pb.Member | None, status: pb.StatusResponse | None,
                   finder: QuotaFinder) -> str:
    """Why the quota of ``member`` is unknown, and what to do."""
    version = f"etcd {status.version}" if status is not None and status.version else "this etcd"
    seen, _ = finder.observed(member)
    local = ("its local etcd command line does not tell it (an unreadable --config-file or environment)"
             if seen else "it does not run on this host (no local etcd process or manifest of it)")
    return f"its backend quota is unknown ({version} does not report it, and {local}); {HINT}"

