"""Structured JSON logs for the daemon, one object per line, with secrets masked.

Secrets never reach the log: the values of passwords and tokens the daemon knows (the etcd password
read from ``passwordFile``/``passwordEnv``, repository options whose name says key/secret/token/password)
are given to :func:`configure` (or added to ``JsonFormatter.secrets``) and replaced by ``***`` in every
message and field.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
from collections.abc import Iterator
from typing import Any, TextIO

_SECRET_KEY = re.compile(r"pass(word)?|secret|token|(access|private|api)[_-]?key|credential", re.IGNORECASE)
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_KEY.search(name))


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: set[str] | None = None) -> None:
        super().__init__()
        self.secrets: set[str] = set(secrets or ())

    def mask(self, text: str) -> str:
        for s in sorted(self.secrets, key=len, reverse=True):
            if s:
                text = text.replace(s, "***")
        return text

    def _value(self, key: str, value: Any) -> Any:
        if is_secret_name(key):
            return "***"
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {str(k): self._value(str(k), v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._value("", v) for v in value]
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self.mask(str(value))

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": self.mask(record.getMessage()),
        }
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                out[k] = self._value(k, v)
        if record.exc_info:
            out["exception"] = self.mask(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


def add_secret(value: str) -> None:
    """Mask ``value`` from now on in every line of the JSON log handlers (a token read after start-up)."""
    if not value:
        return
    for h in logging.getLogger().handlers:
        if isinstance(h.formatter, JsonFormatter):
            h.formatter.secrets.add(value)


def configure(level: str, stream: TextIO, secrets: set[str] | None = None) -> JsonFormatter:
    """Send every log record to ``stream`` as JSON (replaces the root logger's handlers)."""
    fmt = JsonFormatter(secrets)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return fmt


@contextlib.contextmanager
def configured(level: str, stream: TextIO, secrets: set[str] | None = None) -> Iterator[JsonFormatter]:
    """:func:`configure` for the duration of a ``with`` block; the root logger's handlers and level are
    put back afterwards (the CLI and tests run the daemon inside a longer-lived process)."""
    root = logging.getLogger()
    handlers, level_before = list(root.handlers), root.level
    try:
        yield configure(level, stream, secrets)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level_before)
