"""The state file of ``restore cluster``: which steps are done, so a rerun continues where it stopped.

JSON, rewritten atomically (temporary file, fsync, rename) after every step and every per-member
change. A state whose ``finished`` is true is archived when a new restore starts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdwarden.errors import EtcdwardenError
from etcdwarden.fsutil import atomic_write

STATE_FORMAT = 1


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class RestoreState:
    path: Path
    doc: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> RestoreState | None:
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise EtcdwardenError(f"cannot read the restore state {path}: {e}; move it away to start over") from None
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise EtcdwardenError(f"{path} is not a restore state file of this version; move it away to start over")
        return cls(path, doc)

    @classmethod
    def new(cls, path: Path, **fields: Any) -> RestoreState:
        doc = {"format": STATE_FORMAT, "created_at": _now(), "pid": os.getpid(), "steps": {}, "members": {},
               "finished": False, **fields}
        return cls(path, doc)

    def save(self) -> None:
        self.doc["updated_at"] = _now()
        atomic_write(self.path, (json.dumps(self.doc, indent=2, sort_keys=True) + "\n").encode())

    def done(self, step: str) -> bool:
        return bool(self.doc["steps"].get(step, {}).get("done"))

    def mark(self, step: str, **info: Any) -> None:
        self.doc["steps"][step] = {"done": True, "at": _now(), **info}
        self.save()

    def member(self, name: str) -> dict[str, Any]:
        members: dict[str, dict[str, Any]] = self.doc["members"]
        return members.setdefault(name, {})

    def set_member(self, name: str, **values: Any) -> None:
        self.member(name).update(values)
        self.save()

    def archive(self) -> Path:
        dest = self.path.with_name(f"{self.path.name}.done-{self.doc.get('tag', 'old')}")
        os.replace(self.path, dest)
        return dest
