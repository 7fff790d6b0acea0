"""Rendering of command results: etcdctl-style ASCII tables, JSON, and messages on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO


def humanize_bytes(n: int) -> str:
    """SI sizes the way etcdctl prints them (go-humanize ``Bytes``): ``20 kB``, ``5.1 MB``."""
    if n < 10:
        return f"{n} B"
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    import math

    e = math.floor(math.log(n, 1000))
    e = min(e, len(units) - 1)
    val = math.floor(n / (1000**e) * 10 + 0.5) / 10
    fmt = "{:.0f} {}" if val >= 10 else "{:.1f} {}"
    return fmt.format(val, units[e])


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An ASCII table like etcdctl's (tablewriter): centred headers, right-aligned cells."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    def centre(h: str, w: int) -> str:
        gap = w - len(h)
        return " " * (gap // 2) + h + " " * (gap - gap // 2)

    lines = [sep, "|" + "|".join(f" {centre(h, w)} " for h, w in zip(headers, widths, strict=True)) + "|", sep]
    for r in cells:
        lines.append("|" + "|".join(f" {c.rjust(w)} " for c, w in zip(r, widths, strict=True)) + "|")
    lines.append(sep)
    return "\n".join(lines)


@dataclass
class Output:
    """Where a command writes: results to ``out`` (table or JSON), messages to ``err``."""

    write_out: str = "table"
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def is_json(self) -> bool:
        return self.write_out == "json"

    def json(self, obj: Any) -> None:
        self.out.write(json.dumps(obj, sort_keys=False) + "\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.out.write(render_table(headers, rows) + "\n")

    def line(self, text: str) -> None:
        self.out.write(text + "\n")

    def info(self, text: str) -> None:
        self.err.write(text + "\n")

    def warn(self, text: str) -> None:
        self.err.write(f"warning: {text}\n")

    def error(self, text: str) -> None:
        self.err.write(f"Error: {text}\n")
