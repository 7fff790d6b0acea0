"""Resumable migration progress, kept in a small JSON state file.

Per resource and prefix the file records the first key not yet known to be migrated, for the write
target the migration was running with (``aescbc/key2``...). A rerun with the same target resumes
from there; a different target starts over. Writes are atomic (temp file, fsync, rename).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdwarden.encryption.keys import write_private_file
from etcdwarden.errors import UsageError

VERSION = 1


@dataclass
class MigrationState:
    path: Path | None
    targets: dict[str, str] = field(default_factory=dict)  # resource → write label
    cursors: dict[str, bytes] = field(default_factory=dict)  # "resource|prefix" → next start key
    done: set[str] = field(default_factory=set)  # "resource|prefix" finished in the first pass
    complete: bool = False
    previously_complete: bool = False
    _last_save: float = 0.0

    @staticmethod
    def slot(resource: str, prefix: bytes) -> str:
        return f"{resource}|{prefix.decode('utf-8', errors='backslashreplace')}"

    @classmethod
    def load(cls, path: Path | None, targets: dict[str, str]) -> MigrationState:
        """The saved progress if it was for the same targets, else a fresh state."""
        st = cls(path, dict(targets))
        if path is None or not path.exists():
            return st
        try:
            obj: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: migration state file is unreadable ({e}); remove it to start over") from None
        if obj.get("version") != VERSION or obj.get("targets") != targets:
            return st  # another migration: start over
        if obj.get("complete"):
            st.previously_complete = True  # a finished migration: a rerun is a fresh (verifying) pass
            return st
        st.cursors = {k: base64.b64decode(v) for k, v in obj.get("cursors", {}).items()}
        st.done = set(obj.get("done", []))
        return st

    @property
    def resumed(self) -> bool:
        return bool(self.cursors or self.done)

    def start_key(self, resource: str, prefix: bytes) -> bytes | None:
        """Where the first pass starts (None = this prefix already finished)."""
        s = self.slot(resource, prefix)
        if s in self.done:
            return None
        return self.cursors.get(s, prefix)

    def advance(self, resource: str, prefix: bytes, next_key: bytes) -> None:
        self.cursors[self.slot(resource, prefix)] = next_key
        self.save(throttle=1.0)

    def finish(self, resource: str, prefix: bytes) -> None:
        s = self.slot(resource, prefix)
        self.cursors.pop(s, None)
        self.done.add(s)
        self.save()

    def mark_complete(self) -> None:
        self.complete = True
        self.cursors.clear()
        self.done.clear()
        self.save()

    def save(self, throttle: float = 0.0) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if throttle and now - self._last_save < throttle:
            return
        self._last_save = now
        obj = {
            "version": VERSION,
            "targets": self.targets,
            "complete": self.complete,
            "cursors": {k: base64.b64encode(v).decode() for k, v in sorted(self.cursors.items())},
            "done": sorted(self.done),
        }
        write_private_file(self.path, (json.dumps(obj, indent=1) + "\n").encode())


def migration_in_progress(state_path: Path) -> bool:
    """True when a migration state file exists and does not say the migration completed."""
    if not state_path.exists():
        return False
    try:
        obj = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return True  # unreadable progress: assume the worst
    return not (isinstance(obj, dict) and obj.get("complete"))
