"""The repository interface: a flat set of named objects under one location, and the scheme registry.

A repository is where backups live: a local directory (``file:///path``, or a plain path) or a
prefix in an object store (``s3://bucket/prefix``, ``gs://bucket/prefix``, ``az://container/prefix``).
It holds the files of :mod:`etcdwarden.backup.naming` directly under that location; the catalog
(:mod:`.catalog`) makes backups out of them.

The interface is small and synchronous:

* :meth:`Repository.list` — every object directly under the location (never below it);
* :meth:`Repository.stat` — one object's size and modification time, or ``None``;
* :meth:`Repository.open_read` — the object's bytes as an iterator of chunks (streamed);
* :meth:`Repository.open_write` — a :class:`Writer`: bytes go to a temporary name (local: ``.part``,
  written in 1 MiB blocks, + fsync + rename + directory fsync) or into a multipart upload (object
  stores), and the final name appears only on :meth:`Writer.commit`; :meth:`Writer.discard` (or an
  exception inside ``with``) leaves nothing visible. This is the one way bytes reach a repository:
  backups (local or remote), copies between repositories, manifests;
* :meth:`Repository.delete` — remove one object (a missing one is not an error).

Backends register their URL scheme in :data:`.location.REGISTRY` (scheme → ``module:Class``), imported lazily.
Credentials never appear in :attr:`Repository.url` or in an error message.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import hashlib
import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlsplit

from etcdwarden.errors import EtcdwardenError, UsageError
from etcdwarden.fsutil import LockInfo
from etcdwarden.repository.location import REGISTRY, normalize, scheme_of

CHUNK = 1 << 20
_NAME_RE = re.compile(r"^[A-Za-z0-9._+-][A-Za-z0-9._+:-]*$")


class RepositoryError(EtcdwardenError):
    """A repository operation failed (after its retries, for object stores)."""


class ObjectNotFound(RepositoryError):
    """The named object does not exist in the repository."""


class UploadsUnavailable(EtcdwardenError):
    """Incomplete uploads cannot be listed or aborted for this repository (the message says why and what
    to do instead)."""


@dataclass(frozen=True)
class PendingUpload:
    """One incomplete multipart upload under a repository's prefix (see :mod:`.uploads`)."""

    name: str  # the object name relative to the repository's prefix
    key: str  # the full key in the bucket
    upload_id: str
    initiated: dt.datetime  # timezone-aware (UTC)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "upload_id": self.upload_id, "initiated": self.initiated.isoformat()}


def check_name(name: str) -> str:
    """Object names are plain file names: no path separators, no ``.``/``..``, printable ASCII."""
    if not name or name in (".", "..") or not _NAME_RE.match(name):
        raise UsageError(f"{name!r} is not a valid object name in a repository (a plain file name)")
    return name


@dataclass
class StaleCleanup:
    """What :meth:`Repository.remove_stale` did."""

    removed: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)  # name -> why it was left alone


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a repository."""

    name: str
    size: int
    mtime: dt.datetime  # timezone-aware (UTC)


_DURATION_OPTIONS = frozenset({"retry_timeout", "connect_timeout", "request_timeout", "init_backoff", "max_backoff"})
_SIZE_OPTIONS = frozenset({"part_size"})


@dataclass
class RepositoryOptions:
    """How to reach a repository: object-store endpoint, region, credentials, retries, part sizes.

    Anything left ``None`` falls back to the store's own environment variables (``AWS_*``,
    ``GOOGLE_*``, ``AZURE_*``). Secrets are excluded from ``repr``. For ``az://``, ``access_key_id`` is
    the storage account name and ``secret_access_key`` the account key; ``service_account`` (the path
    of a JSON key file) is for ``gs://`` only (see :mod:`etcdwarden.repository.objectstore`).
    """

    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    service_account: str | None = None  # gs://: path of a service-account JSON key file
    allow_http: bool | None = None  # None: allowed exactly when the endpoint is http://
    max_retries: int = 4  # per request, with exponential backoff and jitter
    retry_timeout: float = 60.0  # seconds, per request including its retries
    connect_timeout: float = 10.0
    request_timeout: float = 600.0  # one request (e.g. one part upload)
    init_backoff: float = 0.2
    max_backoff: float = 5.0
    part_size: int = 8 * 1024 * 1024  # multipart part size (and the upload buffer)
    max_concurrency: int = 3  # parts in flight; memory ≈ part_size × (max_concurrency + 1)

    def secrets(self) -> list[str]:
        return [s for s in (self.access_key_id, self.secret_access_key, self.session_token) if s]

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any], base: RepositoryOptions | None = None) -> RepositoryOptions:
        """Options from a config mapping (``repository:`` section); unknown keys are an error. Timeouts and
        backoffs are durations and ``part_size`` a size, in :mod:`etcdwarden.units`' grammar (``30s``, ``16MiB``)."""
        from etcdwarden import units

        out = RepositoryOptions(**vars(base)) if base is not None else RepositoryOptions()
        known = set(vars(out))
        for key, value in doc.items():
            k = str(key).replace("-", "_")
            if k not in known:
                raise UsageError(f"unknown repository option {key!r} (known: {', '.join(sorted(known))})")
            current = getattr(out, k)
            if k in _DURATION_OPTIONS or k in _SIZE_OPTIONS:
                try:
                    n: float = units.parse_duration(value) if k in _DURATION_OPTIONS else units.parse_size(value)
                except units.UnitError as e:
                    raise UsageError(f"repository option {key!r}: {e}") from None
                if n <= 0:
                    raise UsageError(f"repository option {key!r} must be more than 0")
                setattr(out, k, n)
                continue
            if k in ("max_retries", "max_concurrency"):
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
                    raise UsageError(f"repository option {key!r} must be a whole number from 0 to 1000")
            elif isinstance(current, bool) or k == "allow_http":
                if not isinstance(value, bool):
                    raise UsageError(f"repository option {key!r} must be true or false")
            elif isinstance(current, int | float) and not isinstance(value, int | float):
                raise UsageError(f"repository option {key!r} must be a number")
            elif current is None and value is not None and not isinstance(value, str):
                raise UsageError(f"repository option {key!r} must be a string")
            setattr(out, k, value)
        return out


class Writer(ABC):
    """A streaming write of one object; the object appears under its name only on :meth:`commit`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sha = hashlib.sha256()
        self.hashed = True  # False when the caller hashes the same bytes itself (``sha`` stays empty)
        self.size = 0
        self.done = False

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Hand what is buffered to the storage (local: to the ``.part`` file)."""

    def sync(self) -> None:  # noqa: B027 - optional hook
        """Make what was written so far durable ahead of :meth:`commit` (local: fsync the ``.part`` file), so
        that this slow step can overlap other work (a verification); :meth:`commit` stays durable anyway."""

    def write(self, data: bytes | memoryview) -> int:
        if self.done:
            raise RepositoryError(f"{self.name}: write after commit or discard")
        self._write(data)
        if self.hashed:
            self.sha.update(data)
        self.size += len(data)
        return len(data)

    def commit(self) -> None:
        """Make the object visible under its final name (durably), or raise and leave nothing."""
        if self.done:
            raise RepositoryError(f"{self.name}: commit after commit or discard")
        self.done = True
        try:
            self._commit()
        except BaseException:
            self._discard()
            raise

    def discard(self) -> None:
        """Abandon the write; nothing becomes visible. Safe to call more than once."""
        if not self.done:
            self.done = True
            self._discard()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is not None or not self.done:
            self.discard()  # leaving the block without commit() means "abandon"

    @abstractmethod
    def _write(self, data: bytes | memoryview) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _discard(self) -> None: ...


class Repository(ABC):
    """A flat store of named objects (see the module docstring)."""

    scheme: ClassVar[str]

    #: a credential-free URL naming the location, for messages and ``backups list`` "where"
    url: str

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, options: RepositoryOptions) -> Self: ...

    @abstractmethod
    def list(self) -> list[ObjectInfo]: ...

    @abstractmethod
    def stat(self, name: str) -> ObjectInfo | None: ...

    @abstractmethod
    def open_read(self, name: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The object's bytes in chunks; raises :class:`ObjectNotFound` if it does not exist."""

    @abstractmethod
    def open_write(self, name: str, bulk: bool = False) -> Writer:
        """A new object (visible on commit). ``bulk``: a large object written once and not read back soon (a
        backup's snapshot): a local directory writes it past the page cache."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    def fingerprint(self, name: str) -> str | None:
        """What identifies the object's current bytes without reading them (``None``: it does not exist).

        A changed fingerprint means "hash it again". The default is size and modification time; local
        directories add ctime, inode and device, object stores the store's ETag."""
        info = self.stat(name)
        return None if info is None else f"{info.size}:{info.mtime.isoformat()}"

    def incomplete_uploads(self) -> builtins.list[PendingUpload]:
        """Uploads started and never completed nor aborted (a killed writer's), under this location.

        Local directories have none (a killed write leaves a ``.part`` file, which the catalog shows).
        Raises :class:`UploadsUnavailable` when the store cannot say."""
        return []

    def abort_upload(self, upload: PendingUpload) -> None:
        """Abort one incomplete upload (its parts are freed; no object appears)."""
        raise UploadsUnavailable(f"{self.url}: uploads cannot be aborted here")

    @contextlib.contextmanager
    def lock(self, wait: float = 0.0, create: bool = False) -> Iterator[LockInfo | None]:
        """The lock every writer of this repository holds (local directories: ``.etcdwarden.lock``, yielding
        its :class:`~etcdwarden.fsutil.LockInfo`). Object stores have none: ``None`` (one writer per prefix
        is the deployer's rule; an object appears only whole, so two writers never tear one)."""
        yield None

    def remove_stale(self, lock: LockInfo) -> StaleCleanup:
        """Remove the temporary objects a dead writer left (call it holding :meth:`lock`). Object stores
        keep none visible (see :meth:`incomplete_uploads`)."""
        return StaleCleanup()

    def local_directory(self) -> Path | None:
        """The repository as a local directory (``None`` for object stores)."""
        return None

    def sync(self) -> None:  # noqa: B027 - optional hook, a no-op for most backends
        """Make earlier deletions durable (local: fsync the directory). Object stores: nothing to do."""

    def local_path(self, name: str) -> Path | None:
        """The object as a local file, when the repository is a local directory (else ``None``)."""
        return None

    def read_bytes(self, name: str) -> bytes:
        return b"".join(self.open_read(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.open_write(name) as w:
            w.write(data)
            w.commit()

    def where(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for most backends
        """Release connections (nothing to do for most backends)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def split_query(url: str) -> tuple[str, dict[str, str]]:
    """``s3://b/p?endpoint=...&region=...`` -> (``s3://b/p``, options); secrets are refused there."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise UsageError("credentials do not belong in a repository URL; use the store's environment variables "
                         "(AWS_*, AZURE_STORAGE_*, GOOGLE_*) or the repository config file")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for key in query:
        if any(s in key.lower() for s in ("secret", "key_id", "token", "password")):
            raise UsageError(f"repository URL option {key!r}: secrets do not belong in a URL; use the environment "
                             "or the repository config file")
    base = parts._replace(query="", fragment="").geturl()
    return base, query


def open_repository(location: str | Path, options: RepositoryOptions | None = None) -> Repository:
    """Open the repository at ``location`` (a URL or a plain path) with the backend of its scheme."""
    url = normalize(location)
    scheme = scheme_of(url)
    target = REGISTRY.get(scheme)
    if target is None:
        raise UsageError(f"unsupported repository scheme {scheme!r}; use a path, file://, "
                         + ", ".join(f"{s}://" for s in sorted(REGISTRY) if s != "file"))
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"the {scheme}:// backend needs a missing module ({e.name}); "
                         "install etcdwarden with its dependencies (pip install etcdwarden)") from None
    cls: type[Repository] = getattr(module, class_name)
    return cls.from_url(url, options or RepositoryOptions())
