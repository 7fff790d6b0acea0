"""OpenShift's static pod resources: which revision directory of each control-plane component to bundle.

``cluster-backup.sh`` bundles, beside the snapshot, the revision directories
``/etc/kubernetes/static-pod-resources/<component>-pod-<N>`` of kube-apiserver, kube-controller-manager,
kube-scheduler and etcd (their configmaps, secrets - certificates, kubeconfigs, the EncryptionConfiguration
with the keys of an encrypted etcd - and the revision's pod manifest ``<component>-pod.yaml``). It takes
the revision the component's live manifest ``/etc/kubernetes/manifests/<component>-pod.yaml`` refers to
(the one actually running); OpenShift's Go backup takes the newest directory instead.

We do the same: the revision the live manifest names when that directory exists, else the highest
``<N>`` (recorded as such: ``chosen_by``). Every component must have one (a backup that cannot be
restored whole is refused before anything is written). The manifest records the directory and the
revisions (``resources.static_pods``), so a restore knows where they go back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdwarden.errors import UsageError

DEFAULT_DIR = Path("/etc/kubernetes/static-pod-resources")
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")


@dataclass(frozen=True)
class Revision:
    component: str
    revision: int
    path: Path
    chosen_by: str  # "manifest": the live manifest refers to it; "newest": the highest revision present


@dataclass
class StaticPods:
    directory: Path
    manifests_dir: Path
    revisions: list[Revision]
    notes: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [r.path for r in self.revisions]

    def record(self) -> dict[str, Any]:
        """What the manifest records under ``resources.static_pods``."""
        return {"directory": str(self.directory), "manifests_dir": str(self.manifests_dir),
                "revisions": {r.component: r.revision for r in self.revisions},
                "chosen_by": {r.component: r.chosen_by for r in self.revisions}}


def _revisions(directory: Path, component: str) -> dict[int, Path]:
    pattern = re.compile(rf"^{re.escape(component)}-pod-(\d+)$")
    found: dict[int, Path] = {}
    for p in directory.iterdir():
        m = pattern.match(p.name)
        if m and p.is_dir() and not p.is_symlink():
            found[int(m.group(1))] = p
    return found


def _referenced(manifest: Path, directory: Path, component: str) -> int | None:
    """The revision ``manifest`` mounts (``.../static-pod-resources/<component>-pod-<N>``), if it names one."""
    try:
        text = manifest.read_text(errors="replace")
    except OSError:
        return None
    names = {re.escape(str(directory)), re.escape(directory.name)}
    pattern = re.compile(rf"(?:{'|'.join(sorted(names))})/{re.escape(component)}-pod-(\d+)(?![\d])")
    hits = {int(m.group(1)) for m in pattern.finditer(text)}
    return max(hits) if hits else None


def find_static_pods(directory: Path = DEFAULT_DIR, manifests_dir: Path | None = None,
                     components: tuple[str, ...] = COMPONENTS) -> StaticPods:
    """The revision directory of each component in ``directory`` (see the module docstring)."""
    d = directory.resolve()  # as the bundle names its files (resolved paths)
    if not d.is_dir():
        raise UsageError(f"--resources-from-static-pod-resources {directory}: not a directory (OpenShift keeps the "
                         "static pod resources in /etc/kubernetes/static-pod-resources)")
    manifests = (manifests_dir or d.parent / "manifests").absolute()
    found = StaticPods(d, manifests, [])
    missing: list[str] = []
    for c in components:
        revs = _revisions(d, c)
        live = _referenced(manifests / f"{c}-pod.yaml", d, c)
        if live is not None and live in revs:
            found.revisions.append(Revision(c, live, revs[live], "manifest"))
            continue
        if not revs:
            missing.append(c)
            continue
        newest = max(revs)
        if live is not None:
            found.notes.append(f"{manifests / f'{c}-pod.yaml'} refers to {c}-pod-{live}, which is not in {d}: "
                               f"took the newest, {c}-pod-{newest}")
        found.revisions.append(Revision(c, newest, revs[newest], "newest"))
    if missing:
        raise UsageError(f"{d}: no revision directory for " + ", ".join(f"{c} ({c}-pod-<N>)" for c in missing)
                         + ": a backup of the static pod resources needs all of " + ", ".join(components)
                         + " (nothing was written)")
    return found
