"""Errors of the offline snapshot tools."""

from __future__ import annotations

from etcdwarden.errors import EtcdwardenError, UsageError


class SnapshotCorrupt(EtcdwardenError):
    """The snapshot (or backup) is damaged: its message names the first problem found (exit 1)."""


class SnapshotInputError(UsageError):
    """The snapshot could not be opened as given: missing file, unknown format, missing identity (exit 2)."""
