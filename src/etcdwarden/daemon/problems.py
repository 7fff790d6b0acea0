"""Problems in the daemon configuration and where they are: file, line, document and path.

A :class:`Problem` names its place as a user finds it in the YAML (``daemon.yaml:12: document 1
(DaemonConfig main): backups[0].schedule: ...``); :class:`ConfigError` carries every problem found at
once. A :class:`Document` is one YAML document as read, with the line of each path in it
(:class:`LineIndex`), so that whoever checks it (:mod:`.loader` while reading, :mod:`.resolve` across
documents) reports with :func:`locate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from etcdwarden.errors import UsageError

Loc = tuple[str | int, ...]


@dataclass
class Problem:
    file: str
    line: int | None
    where: str  # document label
    path: str
    message: str

    def __str__(self) -> str:
        pos = f"{self.file}:{self.line}" if self.line else self.file
        parts = [pos, self.where, self.path, self.message]
        return ": ".join(p for p in parts if p)


class ConfigError(UsageError):
    """The configuration is invalid; ``problems`` lists every problem found (exit 2)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        n = len(problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the daemon configuration:"
        super().__init__("\n  ".join([head, *(str(p) for p in problems)]))


def path_text(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class LineIndex:
    """Line numbers of a composed YAML document, looked up by path."""

    def __init__(self, node: yaml.Node | None) -> None:
        self.node = node

    def line(self, loc: Loc) -> int | None:
        node = self.node
        if node is None:
            return None
        best = node.start_mark.line + 1
        for part in loc:
            nxt: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == part:
                        nxt = v
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                nxt = node.value[part]
            if nxt is None:
                return best
            node = nxt
            best = node.start_mark.line + 1
        return best


def duplicate_keys(node: yaml.Node, loc: Loc, out: list[tuple[Loc, int, str]]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = str(k.value) if isinstance(k, yaml.ScalarNode) else "?"
            if key in seen:
                out.append(((*loc, key), k.start_mark.line + 1, f"duplicate key {key!r}"))
            seen.add(key)
            duplicate_keys(v, (*loc, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            duplicate_keys(v, (*loc, i), out)


@dataclass
class Document:
    file: str
    index: int
    nodes: LineIndex
    label: str = ""
    index_map: dict[str, list[int]] = field(default_factory=dict)  # valid items of a partial DaemonConfig
    raw_refs: list[tuple[Loc, str]] = field(default_factory=list)  # repositories named by invalid items

    def at(self, section: str, i: int) -> int:
        m = self.index_map.get(section)
        return m[i] if m is not None else i


def locate(doc: Document | None, loc: Loc, message: str, file: str = "") -> Problem:
    """A problem at ``loc`` of ``doc``, or (without a document) of the file or directory ``file`` as a whole."""
    if doc is None:
        return Problem(file, None, "", path_text(loc), message)
    return Problem(doc.file, doc.nodes.line(loc), doc.label, path_text(loc), message)
