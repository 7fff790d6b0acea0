"""Upgrade manifest documents of older formats to the current one, before they are validated.

Each step takes the JSON document of one format and returns that of the next; :func:`upgrade` chains
them. They fill in what the older format left implicit and never drop a field: a field the current
model does not know is kept.

Format 1 (etcdwarden 0.1) has the current shape, but its readers accepted a manifest that held little
more than its ``files`` map (hand-made, or written by a tool that mimicked ours), so:

* ``timestamp`` absent: the ID of the manifest's name;
* ``snapshot`` absent: the one snapshot the ``files`` map lists, with compression and encryption read
  from its name;
* ``resources`` absent while ``files`` lists a bundle: that bundle, with its sha256 and size;
* ``verified`` absent: false (the catalog shows such a backup as *unverified*);
* sha256 digests in upper case: lowered (version 1 readers compared them case-insensitively).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from etcdwarden.format.names import Kind, parse

Doc = dict[str, Any]


def _lower(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


def _from_1(doc: Doc, expected_id: str | None) -> Doc:
    d = dict(doc)
    d["format"] = 2
    if "timestamp" not in d and expected_id is not None:
        d["timestamp"] = expected_id
    files = d.get("files")
    if isinstance(files, dict):
        d["files"] = {k: ({**v, "sha256": _lower(v.get("sha256"))} if isinstance(v, dict) else v)
                      for k, v in files.items()}
        files = d["files"]
        named = {k: parse(k) for k in files if isinstance(k, str)}
        snaps = [k for k, n in named.items() if n is not None and not n.temp and n.kind is Kind.SNAPSHOT]
        bundles = [k for k, n in named.items() if n is not None and not n.temp and n.kind is Kind.RESOURCES]
        snap = d.get("snapshot")
        if (snap is None or (isinstance(snap, dict) and "file" not in snap)) and len(snaps) == 1:
            n = named[snaps[0]]
            assert n is not None
            d["snapshot"] = {**(snap or {}), "file": snaps[0], "compression": n.compression,
                             "encryption": "age" if n.encrypted else None}
        if d.get("resources") is None and len(bundles) == 1 and isinstance(files[bundles[0]], dict):
            entry = files[bundles[0]]
            d["resources"] = {"file": bundles[0], "sha256": entry.get("sha256"), "size": entry.get("size")}
    res = d.get("resources")
    if isinstance(res, dict) and "sha256" in res:
        d["resources"] = {**res, "sha256": _lower(res["sha256"])}
    d.setdefault("verified", False)
    return d


#: format N -> the step that turns a format-N document into a format-(N+1) one
STEPS: dict[int, Callable[[Doc, str | None], Doc]] = {1: _from_1}


def upgrade(doc: Doc, version: int, target: int, expected_id: str | None) -> Doc:
    """``doc`` (of format ``version``) as a document of format ``target``."""
    while version < target:
        doc = STEPS[version](doc, expected_id)
        version += 1
    return doc
