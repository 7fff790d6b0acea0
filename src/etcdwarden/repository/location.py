"""Where a repository is: the URL schemes and their backends, told from text without loading a backend.

Kept apart from :mod:`.base` (and free of heavy imports) because the command line asks "is this a
local path?" for every path argument, and offline commands such as ``snapshot status`` should not pay
for the repository machinery (datetime, hashlib, urllib) to learn that it is.
"""

from __future__ import annotations

import re
from pathlib import Path

#: URL scheme -> "module:Class" (imported on first use by :func:`etcdwarden.repository.base.open_repository`)
REGISTRY: dict[str, str] = {
    "file": "etcdwarden.repository.local:LocalRepository",
    "s3": "etcdwarden.repository.objectstore:S3Repository",
    "gs": "etcdwarden.repository.objectstore:GCSRepository",
    "az": "etcdwarden.repository.objectstore:AzureRepository",
}
SCHEME_RE = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
_ONE_SLASH_RE = re.compile(r"^([a-z][a-z0-9]*):/[^/]", re.IGNORECASE)


def scheme_of(location: str | Path) -> str:
    """``file`` for plain paths; otherwise the URL scheme (``s3``, ``gs``, ``az``)."""
    text = str(location)
    m = SCHEME_RE.match(text)
    if m is None:
        # a URL passed through pathlib loses one slash ("s3://b/p" -> "s3:/b/p"): accept it
        m2 = _ONE_SLASH_RE.match(text)
        if m2 is not None and m2.group(1).lower() in REGISTRY and m2.group(1).lower() != "file":
            return m2.group(1).lower()
        return "file"
    return m.group(1).lower()


def normalize(location: str | Path) -> str:
    """The location as a URL: plain paths become ``file://`` URLs of their absolute path."""
    text = str(location)
    scheme = scheme_of(text)
    if scheme == "file":
        if SCHEME_RE.match(text):
            return text
        return "file://" + str(Path(text).expanduser().absolute())
    if not SCHEME_RE.match(text):
        text = text.replace(":/", "://", 1)
    return text
