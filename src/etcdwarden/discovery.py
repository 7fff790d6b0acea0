"""Find the cluster from an etcd static pod manifest (kubeadm: /etc/kubernetes/manifests/etcd.yaml).

An operator does this by hand with ``grep advertise-client-urls`` and ``grep pki``; we read the
etcd container's command line for ``--advertise-client-urls``, ``--cert-file``, ``--key-file`` and
``--trusted-ca-file``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from etcdwarden.errors import UsageError


@dataclass(frozen=True)
class ManifestInfo:
    path: Path
    client_urls: list[str]
    cacert: Path | None
    cert: Path | None
    key: Path | None


def _flags(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = str(args[i])
        if a.startswith("--"):
            if "=" in a:
                k, v = a[2:].split("=", 1)
                out[k] = v
            elif i + 1 < len(args) and not str(args[i + 1]).startswith("--"):
                out[a[2:]] = str(args[i + 1])
                i += 1
            else:
                out[a[2:]] = "true"
        i += 1
    return out


def _path(flags: dict[str, str], name: str) -> Path | None:
    v = flags.get(name)
    return Path(v) if v else None


def read_manifest(path: Path) -> ManifestInfo:
    try:
        doc: Any = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"etcd manifest {path} not found; pass --endpoints or --from-manifest PATH") from None
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"cannot read etcd manifest {path}: {e}") from None
    containers = (((doc or {}).get("spec") or {}).get("containers")) if isinstance(doc, dict) else None
    if not isinstance(containers, list):
        raise UsageError(f"{path} is not a pod manifest (no spec.containers)")
    for c in containers:
        if not isinstance(c, dict):
            continue
        args = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
        flags = _flags(args)
        urls = flags.get("advertise-client-urls")
        if not urls:
            continue

        return ManifestInfo(
            path=path,
            client_urls=[u.strip() for u in urls.split(",") if u.strip()],
            cacert=_path(flags, "trusted-ca-file"),
            cert=_path(flags, "cert-file"),
            key=_path(flags, "key-file"),
        )
    raise UsageError(f"{path}: no container with --advertise-client-urls; is this the etcd manifest?")
