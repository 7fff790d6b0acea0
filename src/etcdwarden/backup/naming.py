"""Names of the files of one backup, all sharing one timestamp ``YYYY-MM-DD_HHMMSS`` (UTC)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


def timestamp(now: dt.datetime | None = None) -> str:
    t = now or dt.datetime.now(dt.UTC)
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d_%H%M%S")


@dataclass(frozen=True)
class BackupNames:
    ts: str
    compression: str | None = None
    encrypted: bool = False

    @property
    def snapshot(self) -> str:
        name = f"snapshot_{self.ts}.db"
        if self.compression == "zstd":
            name += ".zst"
        if self.encrypted:
            name += ".age"
        return name

    @property
    def resources(self) -> str:
        return f"static_kuberesources_{self.ts}.tar.gz" + (".age" if self.encrypted else "")

    @property
    def manifest(self) -> str:
        return f"backup_{self.ts}.json"
