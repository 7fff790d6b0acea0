"""The part of a backup manifest (``backup_<ts>.json``) that ``snapshot verify`` relies on.

A backup directory holds, for one timestamp ``<ts>`` = ``YYYY-MM-DD_HHMMSS``::

    snapshot_<ts>.db[.zst][.age]            the etcd snapshot (sha256 trailer kept)
    static_kuberesources_<ts>.tar.gz[.age]  optional resources bundle
    backup_<ts>.json                        the manifest, written last

Manifest fields read here (every other field is ignored, so the manifest may grow freely):

``files`` (required)
    object: file name (a bare name in the same directory, no path) ->
    ``{"sha256": "<64 lowercase hex>", "size": <bytes>}``. It must list the snapshot file, and the
    resources bundle when there is one. The manifest does not list itself.
``timestamp`` (optional)
    ``"YYYY-MM-DD_HHMMSS"``; when absent it is taken from the manifest's file name. Every listed
    snapshot / resources file must carry this same timestamp in its name.

Example::

    {"timestamp": "2024-05-01_120000",
     "files": {"snapshot_2024-05-01_120000.db": {"sha256": "9f86...", "size": 5070880},
               "static_kuberesources_2024-05-01_120000.tar.gz": {"sha256": "...", "size": 1234}}}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from etcdwarden.snapshot.errors import SnapshotCorrupt

TS = r"\d{4}-\d{2}-\d{2}_\d{6}"
MANIFEST_RE = re.compile(rf"^backup_({TS})\.json$")
SNAPSHOT_RE = re.compile(rf"^snapshot_({TS})\.db(\.zst)?(\.age)?$")
RESOURCES_RE = re.compile(rf"^static_kuberesources_({TS})\.tar\.gz(\.age)?$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ManifestFile:
    """One entry of the manifest's ``files`` map."""

    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class BackupManifest:
    """The fields of ``backup_<ts>.json`` that verification relies on (see the module docstring)."""

    path: Path
    timestamp: str
    files: dict[str, ManifestFile]

    @property
    def snapshot(self) -> ManifestFile | None:
        return next((f for f in self.files.values() if SNAPSHOT_RE.match(f.name)), None)

    @property
    def resources(self) -> ManifestFile | None:
        return next((f for f in self.files.values() if RESOURCES_RE.match(f.name)), None)

    @classmethod
    def load(cls, path: Path) -> BackupManifest:
        """Read and check the shape of a manifest; raise :class:`SnapshotCorrupt` naming the problem."""
        try:
            doc = json.loads(path.read_text())
        except OSError as e:
            raise SnapshotCorrupt(f"{path}: cannot read the manifest: {e.strerror}") from e
        except ValueError as e:
            raise SnapshotCorrupt(f"{path}: the manifest is not valid JSON: {e}") from e
        if not isinstance(doc, dict):
            raise SnapshotCorrupt(f"{path}: the manifest is not a JSON object")
        m = MANIFEST_RE.match(path.name)
        ts = doc.get("timestamp", m.group(1) if m else None)
        if not isinstance(ts, str) or not re.fullmatch(TS, ts):
            raise SnapshotCorrupt(f"{path}: no valid timestamp (YYYY-MM-DD_HHMMSS) in the manifest or its name")
        raw = doc.get("files")
        if not isinstance(raw, dict) or not raw:
            raise SnapshotCorrupt(f"{path}: the manifest has no \"files\" map")
        files: dict[str, ManifestFile] = {}
        for name, entry in raw.items():
            if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
                raise SnapshotCorrupt(f"{path}: file name {name!r} is not a plain file name")
            if not isinstance(entry, dict):
                raise SnapshotCorrupt(f"{path}: files[{name!r}] is not an object")
            sha, size = entry.get("sha256"), entry.get("size")
            if not isinstance(sha, str) or not _SHA_RE.match(sha.lower()):
                raise SnapshotCorrupt(f"{path}: files[{name!r}].sha256 is not a sha256 hex digest")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise SnapshotCorrupt(f"{path}: files[{name!r}].size is not a byte count")
            files[name] = ManifestFile(name, sha.lower(), size)
        return cls(path, ts, files)
