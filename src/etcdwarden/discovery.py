"""Find the cluster from an etcd static pod manifest (kubeadm: /etc/kubernetes/manifests/etcd.yaml; OpenShift:
/etc/kubernetes/manifests/etcd-pod.yaml).

An operator does this by hand with ``grep advertise-client-urls`` and ``grep pki``. kubeadm: we read the
etcd container's command line for ``--advertise-client-urls``, ``--cert-file``, ``--key-file`` and
``--trusted-ca-file``. OpenShift's etcd container runs a shell script instead; its ``etcdctl`` container
carries what an operator's etcdctl needs in its environment: ``ETCDCTL_ENDPOINTS``, ``ETCDCTL_CACERT``,
``ETCDCTL_CERT``, ``ETCDCTL_KEY``, which we read when no container has the flags.

Paths are the container's: each one is mapped to the host through the container's ``volumeMounts`` and
the pod's ``hostPath`` volumes (OpenShift mounts ``/etc/kubernetes/static-pod-resources/etcd-certs`` at
``/etc/kubernetes/static-pod-certs``; kubeadm mounts its PKI at the same path, which maps to itself).
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
    source: str = "flags"  # "flags" (the etcd container's command line) or "etcdctl env" (OpenShift)


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


def _volumes(doc: dict[str, Any]) -> dict[str, str]:
    """hostPath of each volume of the pod, by name."""
    out: dict[str, str] = {}
    for v in ((doc.get("spec") or {}).get("volumes") or []):
        if isinstance(v, dict) and isinstance(v.get("hostPath"), dict) and v["hostPath"].get("path"):
            out[str(v.get("name"))] = str(v["hostPath"]["path"])
    return out


def host_path(path: str, container: dict[str, Any], volumes: dict[str, str]) -> Path:
    """Where the container's ``path`` is on the host (the longest mount that holds it); as is when none does."""
    best: tuple[str, str] | None = None
    for vm in container.get("volumeMounts") or []:
        if not isinstance(vm, dict):
            continue
        mount = str(vm.get("mountPath") or "").rstrip("/")
        name = str(vm.get("name"))
        if mount and name in volumes and (path == mount or path.startswith(mount + "/")) \
                and (best is None or len(mount) > len(best[0])):
            best = (mount, volumes[name])
    if best is None:
        return Path(path)
    return Path(best[1].rstrip("/") + path[len(best[0]):])


def _path(value: str | None, container: dict[str, Any], volumes: dict[str, str]) -> Path | None:
    return host_path(value, container, volumes) if value else None


def _env(container: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in container.get("env") or []:
        if isinstance(e, dict) and e.get("name") and isinstance(e.get("value"), str):
            out[str(e["name"])] = e["value"]
    return out


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
    volumes = _volumes(doc)
    pods = [c for c in containers if isinstance(c, dict)]
    for c in pods:
        args = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
        flags = _flags(args)
        urls = flags.get("advertise-client-urls")
        if not urls:
            continue
        return ManifestInfo(
            path=path,
            client_urls=[u.strip() for u in urls.split(",") if u.strip()],
            cacert=_path(flags.get("trusted-ca-file"), c, volumes),
            cert=_path(flags.get("cert-file"), c, volumes),
            key=_path(flags.get("key-file"), c, volumes),
        )
    for c in pods:  # OpenShift: the etcdctl container's environment
        env = _env(c)
        urls = env.get("ETCDCTL_ENDPOINTS")
        if not urls:
            continue
        return ManifestInfo(
            path=path,
            client_urls=[u.strip() for u in urls.split(",") if u.strip()],
            cacert=_path(env.get("ETCDCTL_CACERT"), c, volumes),
            cert=_path(env.get("ETCDCTL_CERT"), c, volumes),
            key=_path(env.get("ETCDCTL_KEY"), c, volumes),
            source="etcdctl env",
        )
    raise UsageError(f"{path}: no container with --advertise-client-urls nor ETCDCTL_ENDPOINTS in its environment; "
                     "is this the etcd manifest?")
