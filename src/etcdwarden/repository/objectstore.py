"""Object-store repositories through obstore: ``s3://bucket/prefix`` (AWS S3 and S3-compatible stores),
``gs://bucket/prefix`` (Google Cloud Storage) and ``az://container/prefix`` (Azure Blob Storage).

Writes stream into a multipart upload (parts of :attr:`RepositoryOptions.part_size`, at most
:attr:`RepositoryOptions.max_concurrency` in flight, so memory stays bounded whatever the size); the
object appears under its key only when the upload completes, and an abandoned write is aborted.
Every request is retried with exponential backoff and jitter, bounded by ``max_retries`` and
``retry_timeout``; then the operation fails with a :class:`RepositoryError` naming the object and the
first line of the store's error, with every known secret masked.

S3 settings come from the options (config file / command line), then the URL query
(``?endpoint=http://127.0.0.1:8333&region=us-east-1``; secrets are refused in a URL), then the usual
``AWS_*`` environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``), which obstore reads itself. A custom
endpoint uses path-style requests; ``http://`` endpoints are allowed only when named explicitly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn, Self
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import NotFoundError

from etcdwarden.errors import UsageError
from etcdwarden.repository.base import (
    CHUNK,
    ObjectInfo,
    ObjectNotFound,
    Repository,
    RepositoryError,
    RepositoryOptions,
    Writer,
    check_name,
    split_query,
)

if TYPE_CHECKING:
    from obstore import WritableFile
    from obstore.store import AzureConfig, ClientConfig, GCSConfig, ObjectStore, RetryConfig, S3Config

_QUERY_KEYS = {"endpoint", "region", "allow_http"}


def _mask(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


def _first_line(e: BaseException) -> str:
    text = str(e).split("\n\nDebug source:", 1)[0]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else type(e).__name__
    return line if len(line) <= 400 else line[:400] + "..."


class ObjectStoreWriter(Writer):
    def __init__(self, repo: ObjectStoreRepository, name: str) -> None:
        super().__init__(name)
        self.repo = repo
        try:
            self.file: WritableFile | None = obstore.open_writer(
                repo.store, name, buffer_size=repo.options.part_size, max_concurrency=repo.options.max_concurrency)
        except Exception as e:
            repo.fail("cannot start the upload of", name, e)

    def _write(self, data: bytes | memoryview) -> None:
        assert self.file is not None
        try:
            self.file.write(data)
        except Exception as e:
            self.repo.fail("upload failed for", self.name, e)

    def _commit(self) -> None:
        assert self.file is not None
        try:
            self.file.close()  # completes the multipart upload: the key appears now
        except Exception as e:
            self.repo.fail("upload failed for", self.name, e)
        finally:
            self.file = None

    def _discard(self) -> None:
        f, self.file = self.file, None
        if f is not None:
            # leaving the writer's context with an exception aborts the multipart upload
            with contextlib.suppress(Exception):
                f.__exit__(RepositoryError, RepositoryError("upload abandoned"), None)


class ObjectStoreRepository(Repository):
    """Common code of the obstore-backed repositories; subclasses build the store."""

    scheme = ""

    def __init__(self, store: ObjectStore, url: str, options: RepositoryOptions) -> None:
        self.store = store
        self.url = url
        self.options = options

    @classmethod
    def from_url(cls, url: str, options: RepositoryOptions) -> Self:
        base, query = split_query(url)
        unknown = set(query) - _QUERY_KEYS
        if unknown:
            raise UsageError(f"{base}: unknown URL option(s) {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(sorted(_QUERY_KEYS))})")
        opts = RepositoryOptions(**vars(options))
        if "endpoint" in query and opts.endpoint is None:
            opts.endpoint = query["endpoint"]
        if "region" in query and opts.region is None:
            opts.region = query["region"]
        if opts.endpoint is None:
            opts.endpoint = cls.env_endpoint()
        if "allow_http" in query and opts.allow_http is None:
            opts.allow_http = query["allow_http"].lower() in ("1", "true", "yes")
        parts = urlsplit(base)
        bucket = parts.netloc
        if not bucket:
            raise UsageError(f"{base}: no bucket/container (expected {cls.scheme}://BUCKET[/PREFIX])")
        prefix = parts.path.strip("/") or None
        display = f"{cls.scheme}://{bucket}" + (f"/{prefix}" if prefix else "")
        try:
            store = cls.make_store(bucket, prefix, opts)
        except UsageError:
            raise
        except Exception as e:
            raise RepositoryError(f"{display}: cannot configure the store: "
                                  f"{_mask(_first_line(e), opts.secrets())}") from None
        return cls(store, display, opts)

    @classmethod
    def make_store(cls, bucket: str, prefix: str | None, opts: RepositoryOptions) -> ObjectStore:
        raise NotImplementedError

    @classmethod
    def env_endpoint(cls) -> str | None:
        """The endpoint named by the environment, if any (so ``allow_http`` can follow it)."""
        return None

    @staticmethod
    def client_options(opts: RepositoryOptions) -> ClientConfig:
        allow_http = opts.allow_http
        if allow_http is None:
            allow_http = bool(opts.endpoint and opts.endpoint.lower().startswith("http://"))
        return {"allow_http": allow_http, "connect_timeout": dt.timedelta(seconds=opts.connect_timeout),
                "timeout": dt.timedelta(seconds=opts.request_timeout)}

    @staticmethod
    def retry_config(opts: RepositoryOptions) -> RetryConfig:
        return {"max_retries": opts.max_retries, "retry_timeout": dt.timedelta(seconds=opts.retry_timeout),
                "backoff": {"init_backoff": dt.timedelta(seconds=opts.init_backoff),
                            "max_backoff": dt.timedelta(seconds=opts.max_backoff), "base": 2}}

    def fail(self, what: str, name: str | None, e: BaseException) -> NoReturn:
        where = self.where(name) if name else self.url
        if isinstance(e, NotFoundError | FileNotFoundError):
            raise ObjectNotFound(f"{where}: no such object") from None
        raise RepositoryError(f"{what} {where}: {_mask(_first_line(e), self.options.secrets())}") from None

    def list(self) -> list[ObjectInfo]:
        try:
            res = obstore.list_with_delimiter(self.store)
        except Exception as e:
            self.fail("cannot list", None, e)
        out = [ObjectInfo(str(o["path"]), int(o["size"]), o["last_modified"]) for o in res["objects"]]
        # some stores list the prefix itself ("" or a "dir/" marker): not an object of ours
        return sorted((o for o in out if o.name and "/" not in o.name), key=lambda o: o.name)

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            meta = obstore.head(self.store, check_name(name))
        except (NotFoundError, FileNotFoundError):
            return None
        except Exception as e:
            self.fail("cannot stat", name, e)
        return ObjectInfo(name, int(meta["size"]), meta["last_modified"])

    def open_read(self, name: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        try:
            result = obstore.get(self.store, check_name(name))
        except Exception as e:
            self.fail("cannot read", name, e)
        return self._stream(name, result, chunk_size)

    def _stream(self, name: str, result: Any, chunk_size: int) -> Iterator[bytes]:
        try:
            for chunk in result.stream(min_chunk_size=chunk_size):
                yield bytes(chunk)
        except Exception as e:
            self.fail("download failed for", name, e)

    def open_write(self, name: str) -> Writer:
        return ObjectStoreWriter(self, check_name(name))

    def delete(self, name: str) -> None:
        try:
            obstore.delete(self.store, check_name(name))
        except (NotFoundError, FileNotFoundError):
            return
        except Exception as e:
            self.fail("cannot delete", name, e)


class S3Repository(ObjectStoreRepository):
    scheme = "s3"

    @classmethod
    def env_endpoint(cls) -> str | None:
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None

    @classmethod
    def make_store(cls, bucket: str, prefix: str | None, opts: RepositoryOptions) -> ObjectStore:
        from obstore.store import S3Store

        config: S3Config = {}
        endpoint = opts.endpoint
        if endpoint:
            if not endpoint.lower().startswith(("http://", "https://")):
                raise UsageError(f"S3 endpoint {endpoint!r} must start with http:// or https://")
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = False
        region = opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            config["region"] = region
        elif endpoint:
            config["region"] = "us-east-1"  # S3-compatible stores accept any region in the signature
        if opts.access_key_id:
            config["access_key_id"] = opts.access_key_id
        if opts.secret_access_key:
            config["secret_access_key"] = opts.secret_access_key
        if opts.session_token:
            config["session_token"] = opts.session_token
        return S3Store(bucket, prefix=prefix, config=config, client_options=cls.client_options(opts),
                       retry_config=cls.retry_config(opts))


class GCSRepository(ObjectStoreRepository):
    """``gs://bucket/prefix``; credentials: ``GOOGLE_APPLICATION_CREDENTIALS`` / ``GOOGLE_SERVICE_ACCOUNT``."""

    scheme = "gs"

    @classmethod
    def make_store(cls, bucket: str, prefix: str | None, opts: RepositoryOptions) -> ObjectStore:
        from obstore.store import GCSStore

        config: GCSConfig = {}
        if opts.endpoint:
            config["base_url"] = opts.endpoint
        return GCSStore(bucket, prefix=prefix, config=config, client_options=cls.client_options(opts),
                        retry_config=cls.retry_config(opts))


class AzureRepository(ObjectStoreRepository):
    """``az://container/prefix``; account and credentials: ``AZURE_STORAGE_ACCOUNT_NAME``,
    ``AZURE_STORAGE_ACCOUNT_KEY`` / SAS / service principal variables (read by obstore)."""

    scheme = "az"

    @classmethod
    def make_store(cls, bucket: str, prefix: str | None, opts: RepositoryOptions) -> ObjectStore:
        from obstore.store import AzureStore

        config: AzureConfig = {}
        if opts.endpoint:
            config["endpoint"] = opts.endpoint
        if opts.access_key_id:
            config["account_name"] = opts.access_key_id
        if opts.secret_access_key:
            config["account_key"] = opts.secret_access_key
        return AzureStore(bucket, prefix=prefix, config=config, client_options=cls.client_options(opts),
                          retry_config=cls.retry_config(opts))
