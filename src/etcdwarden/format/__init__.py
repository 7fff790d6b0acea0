"""What a backup is on storage: the names of its artifacts (:mod:`.names`) and its manifest (:mod:`.manifest`).

This package is the one definition every writer and reader uses: ``backup`` writes through it, the
repository catalog, ``snapshot verify``, ``restore`` and the daemon read through it. It imports nothing
of etcdwarden but :mod:`etcdwarden.errors`.
"""

from etcdwarden.format.manifest import FORMAT, Manifest, ManifestError, ManifestTooNew, dump, load
from etcdwarden.format.names import TS, TS_RE, BackupNames, Kind, Name, parse, parse_id, timestamp
from etcdwarden.format.segment import SegmentError, SegmentManifest

__all__ = ["FORMAT", "TS", "TS_RE", "BackupNames", "Kind", "Manifest", "ManifestError", "ManifestTooNew", "Name",
           "SegmentError", "SegmentManifest", "dump", "load", "parse", "parse_id", "timestamp"]
