"""Moved to :mod:`etcdwarden.format.names` (the names of every artifact); kept for imports not yet updated."""

from etcdwarden.format.names import BackupNames, timestamp

__all__ = ["BackupNames", "timestamp"]
