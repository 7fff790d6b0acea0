"""Global flags (etcdctl-compatible) and their ``ETCDCTL_*`` environment variables.

Precedence: flag > environment > default. With neither ``--endpoints`` nor ``ETCDCTL_ENDPOINTS``,
the etcd static pod manifest of a control-plane host is read (``--from-manifest``, kubeadm's path, or
OpenShift's ``etcd-pod.yaml``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from etcdwarden import units
from etcdwarden.errors import UsageError

if TYPE_CHECKING:  # imported by the commands that talk to etcd: offline commands start faster without it
    from etcdwarden.etcd.config import ClientConfig

DEFAULT_MANIFEST = Path("/etc/kubernetes/manifests/etcd.yaml")  # kubeadm
OPENSHIFT_MANIFEST = Path("/etc/kubernetes/manifests/etcd-pod.yaml")

# (flag, dest, env, kind, default, help)
GLOBAL_FLAGS: list[tuple[str, str, str, str, object, str]] = [
    ("--endpoints", "endpoints", "ETCDCTL_ENDPOINTS", "str", None, "comma-separated gRPC endpoints"),
    ("--cacert", "cacert", "ETCDCTL_CACERT", "str", None, "CA bundle to verify servers"),
    ("--cert", "cert", "ETCDCTL_CERT", "str", None, "client certificate"),
    ("--key", "key", "ETCDCTL_KEY", "str", None, "client private key"),
    ("--user", "user", "ETCDCTL_USER", "str", None, "username[:password]"),
    ("--password", "password", "ETCDCTL_PASSWORD", "str", None, "password (not in --user)"),
    ("--insecure-skip-tls-verify", "insecure_skip_tls_verify", "ETCDCTL_INSECURE_SKIP_TLS_VERIFY",
     "bool", False, "skip server certificate verification (insecure)"),
    ("--dial-timeout", "dial_timeout", "ETCDCTL_DIAL_TIMEOUT", "duration", "2s",
     "dial timeout (default 2s; e.g. 500ms, 2s, 1m)"),
    ("--command-timeout", "command_timeout", "ETCDCTL_COMMAND_TIMEOUT", "duration", "5s",
     "timeout of each command (default 5s)"),
    ("--write-out", "write_out", "ETCDCTL_WRITE_OUT", "str", "table", "output format: table or json"),
    ("--from-manifest", "from_manifest", "ETCDWARDEN_FROM_MANIFEST", "str", None,
     "etcd static pod manifest to read endpoints and certificates from"),
]


def parse_duration(text: str, name: str = "duration", positive: bool = False) -> float:
    """A duration in :mod:`etcdwarden.units`' grammar (``500ms``, ``5s``, ``2m``, ``1h30m``, ``1d``) → seconds;
    a UsageError naming ``name`` (the flag or variable) otherwise."""
    try:
        seconds = units.parse_duration(text)
    except units.UnitError as e:
        raise UsageError(f"{name}: {e}") from None
    if positive and seconds <= 0:
        raise UsageError(f"{name}: the duration must be more than 0 (got {text!r})")
    return seconds


def duration_arg(positive: bool = False) -> Callable[[str], float]:
    """An argparse ``type=``: a duration in seconds; argparse reports a bad one with the flag (exit 2)."""
    def parse(text: str) -> float:
        try:
            seconds = units.parse_duration(text)
        except units.UnitError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if positive and seconds <= 0:
            raise argparse.ArgumentTypeError(f"the duration must be more than 0 (got {text!r})")
        return seconds

    parse.__name__ = "duration"
    return parse


def count_arg(minimum: int = 0) -> Callable[[str], int]:
    """An argparse ``type=``: a whole number of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            n = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (got {n})")
        return n

    parse.__name__ = "count"
    return parse


def gib_arg(text: str) -> int:
    """An argparse ``type=``: a finite number of GiB above 0 (``10``, ``0.5``) → bytes."""
    try:
        return units.parse_gib(text)
    except units.UnitError as e:
        raise argparse.ArgumentTypeError(f"{e}; use e.g. 10 or 0.5 (GiB), or --max-size 10GiB") from None


def size_arg(bare_bytes: bool = False, positive: bool = False) -> Callable[[str], int]:
    """An argparse ``type=``: a size in bytes (``10GiB``; a bare number is bytes only with ``bare_bytes``)."""
    def parse(text: str) -> int:
        try:
            n = units.parse_size(text, bare_bytes=bare_bytes)
        except units.UnitError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if positive and n <= 0:
            raise argparse.ArgumentTypeError(f"the size must be more than 0 (got {text!r})")
        return n

    parse.__name__ = "size"
    return parse


def add_global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Add the global flags. Subcommand copies use SUPPRESS so they only override when given."""
    g = parser.add_argument_group("global options")
    for flag, dest, _env, kind, _default, help_ in GLOBAL_FLAGS:
        default = argparse.SUPPRESS if suppress else None
        if kind == "bool":
            g.add_argument(flag, dest=dest, action="store_const", const=True, default=default, help=help_)
        elif flag == "--write-out":
            g.add_argument("-w", flag, dest=dest, choices=["table", "json"], default=default, help=help_)
        else:
            g.add_argument(flag, dest=dest, default=default, help=help_)


def resolve(args: argparse.Namespace, environ: Mapping[str, str], dest: str) -> object:
    """The effective value of a global option: flag, then environment, then default."""
    for flag, d, env, kind, default, _help in GLOBAL_FLAGS:
        if d != dest:
            continue
        val = getattr(args, dest, None)
        source = flag
        if val is None and env in environ:
            raw = environ[env]
            val = raw.lower() in ("1", "true", "yes") if kind == "bool" else raw
            source = env
        if val is None:
            val = default
        if kind == "duration" and isinstance(val, str):
            return parse_duration(val, source, positive=True)
        return val
    raise KeyError(dest)


def client_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None,
                  notes: list[str] | None = None) -> ClientConfig:
    """Build the client configuration from flags, ``ETCDCTL_*`` and, if needed, the pod manifest."""
    from etcdwarden.discovery import read_manifest
    from etcdwarden.etcd.config import ClientConfig
    from etcdwarden.etcd.endpoints import parse_endpoints

    env = os.environ if environ is None else environ
    endpoints = resolve(args, env, "endpoints")
    cacert = resolve(args, env, "cacert")
    cert = resolve(args, env, "cert")
    key = resolve(args, env, "key")
    manifest = resolve(args, env, "from_manifest")
    if endpoints is None:
        path = Path(str(manifest)) if manifest else DEFAULT_MANIFEST
        if not manifest and not path.exists() and OPENSHIFT_MANIFEST.exists():
            path = OPENSHIFT_MANIFEST
        if manifest or path.exists():
            found = read_manifest(path)
            endpoints = ",".join(found.client_urls)
            cacert = cacert or (str(found.cacert) if found.cacert else None)
            cert = cert or (str(found.cert) if found.cert else None)
            key = key or (str(found.key) if found.key else None)
            if notes is not None:
                notes.append(f"using endpoints and certificates from the etcd manifest {path}")
        else:
            endpoints = "127.0.0.1:2379"
    user = resolve(args, env, "user")
    password = resolve(args, env, "password")
    if isinstance(user, str) and ":" in user and password is None:
        user, password = user.split(":", 1)
    for label, p in (("--cacert", cacert), ("--cert", cert), ("--key", key)):
        if p is not None and not Path(str(p)).is_file():
            raise UsageError(f"{label} {p}: file not found or not readable")
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key must be given together (client certificate and its key)")
    dial = resolve(args, env, "dial_timeout")
    command = resolve(args, env, "command_timeout")
    assert isinstance(dial, float) and isinstance(command, float)
    return ClientConfig(
        endpoints=tuple(parse_endpoints(str(endpoints))),
        cacert=Path(str(cacert)) if cacert else None,
        cert=Path(str(cert)) if cert else None,
        key=Path(str(key)) if key else None,
        insecure_skip_tls_verify=bool(resolve(args, env, "insecure_skip_tls_verify")),
        user=str(user) if user else None,
        password=str(password) if password is not None else None,
        dial_timeout=dial,
        command_timeout=command,
        env=tuple((k, v) for k, v in env.items() if k.lower() in
                  ("https_proxy", "http_proxy", "no_proxy", "grpc_proxy", "no_grpc_proxy")),
    )


#: how the command line names the settings library messages mention (errors.setting)
CLI_SETTINGS: dict[str, str] = {
    "lock_wait": "wait for the lock with --lock-wait DURATION (e.g. 30s)",
    "continue_on_error": "--continue-on-error",
    "force": "--force",
    "defrag_timeout": "--command-timeout",
    "rule": "--rule",
    "incomplete_grace": "--incomplete-grace",
    "credentials": "--user and --password (or ETCDCTL_USER / ETCDCTL_PASSWORD)",
    "resources": "--resources",
    "encrypt_to": "--encrypt-to",
}
