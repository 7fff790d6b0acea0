"""The operation in progress (enable, rotate, disable), so that a rerun finishes it.

An operation writes its configuration phases one after the other and then migrates; a kill or a
failure in between leaves the configuration at some phase. The journal, a small JSON file next to
the EncryptionConfiguration (``<config>.operation.json``, 0600, atomic), records which operation
was running, on which resources, and the name of the key it introduced. A rerun of the same
operation on the same resources plans *that* key again (already added: only promoted; already
promoted: only migrated) instead of minting another one. It holds no key material: a key the
interrupted run never wrote anywhere is simply generated anew under the recorded name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etcdwarden.encryption.keys import write_private_file
from etcdwarden.errors import UsageError

VERSION = 1
RUNNING = "running"
DONE = "done"


def journal_path(config_path: Path) -> Path:
    return config_path.with_name(config_path.name + ".operation.json")


@dataclass
class Journal:
    path: Path
    operation: str
    resources: list[str]
    new_key: str | None = None
    provider: str | None = None
    status: str = RUNNING
    started: float = 0.0

    @classmethod
    def load(cls, path: Path) -> Journal | None:
        if not path.exists():
            return None
        try:
            obj: Any = json.loads(path.read_text())
            if not isinstance(obj, dict) or obj.get("version") != VERSION:
                raise ValueError("unknown format")
            res = obj["resources"]
            if not isinstance(res, list) or not all(isinstance(r, str) for r in res):
                raise ValueError("resources is not a list of names")
            j = cls(path, str(obj["operation"]), list(res), obj.get("new_key"), obj.get("provider"),
                    str(obj.get("status", RUNNING)), float(obj.get("started", 0.0)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{path}: the operation journal is unreadable ({e}); check the EncryptionConfiguration "
                             "and remove the journal to start over") from None
        if j.new_key is not None and not isinstance(j.new_key, str):
            raise UsageError(f"{path}: the operation journal is unreadable (new_key); remove it to start over")
        return j

    def resumes(self, operation: str, names: Sequence[str], provider: str | None = None) -> bool:
        """Whether a run of ``operation`` on ``names`` (with ``provider``) continues this unfinished operation."""
        return (self.status == RUNNING and self.operation == operation and sorted(self.resources) == sorted(names)
                and self.provider == provider)

    def save(self) -> None:
        obj = {"version": VERSION, "operation": self.operation, "resources": sorted(self.resources),
               "new_key": self.new_key, "provider": self.provider, "status": self.status,
               "started": self.started or time.time()}
        write_private_file(self.path, (json.dumps(obj, indent=1) + "\n").encode())

    def finish(self) -> None:
        self.status = DONE
        self.save()
