"""Offline etcd snapshot tools: a bbolt reader, ``status``, ``verify``, ``inspect`` and ``diff``.

Nothing here needs an etcd server or binary. Entry points:

* :func:`etcdwarden.snapshot.source.open_snapshot` turns a ``.db``, ``.db.zst`` or ``.age`` file into a
  plain database path (context manager);
* :func:`etcdwarden.snapshot.status.snapshot_status` (``etcdutl snapshot status`` 3.5, bit for bit);
* :func:`etcdwarden.snapshot.verify.verify_path` (a snapshot file) and :func:`~etcdwarden.snapshot.verify.verify_backup`
  (one backup whose manifest is read);
* :func:`etcdwarden.snapshot.inspect.read_keys` and :func:`etcdwarden.snapshot.diff.diff_snapshots`.
"""

from __future__ import annotations

from etcdwarden.snapshot.errors import SnapshotCorrupt, SnapshotInputError

__all__ = ["SnapshotCorrupt", "SnapshotInputError"]
