"""What a backup is on storage: the names of its artifacts (:mod:`.names`) and its manifest (:mod:`.manifest`).

This package is the one definition every writer and reader uses: ``backup`` writes through it, the
repository catalog, ``snapshot verify``, ``restore`` and the daemon read through it. It imports nothing
of etcdwarden but :mod:`etcdwarden.errors`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from etcdwarden.format.names import TS, TS_RE, BackupNames, Kind, Name, parse, parse_id, timestamp

if TYPE_CHECKING:
    from etcdwarden.format.manifest import FORMAT, Manifest, ManifestError, ManifestTooNew, dump, load
    from etcdwarden.format.segment import SegmentError, SegmentManifest

#: the pydantic models are imported on first use: building them costs about 0.2 s and 13 MiB, which a backup
#: pays only once its snapshot has streamed (names are all it needs before)
_LAZY = {"FORMAT": "manifest", "Manifest": "manifest", "ManifestError": "manifest", "ManifestTooNew": "manifest",
         "dump": "manifest", "load": "manifest", "SegmentError": "segment", "SegmentManifest": "segment"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["FORMAT", "TS", "TS_RE", "BackupNames", "Kind", "Manifest", "ManifestError", "ManifestTooNew", "Name",
           "SegmentError", "SegmentManifest", "dump", "load", "parse", "parse_id", "timestamp"]
