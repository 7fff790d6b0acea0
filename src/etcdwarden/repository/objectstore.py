"""Object-store repositories through obstore: ``s3://bucket/prefix`` (AWS S3 and S3-compatible stores),
``gs://bucket/prefix`` (Google Cloud Storage) and ``az://container/prefix`` (Azure Blob Storage).

Writes stream into a multipart upload (parts of :attr:`RepositoryOptions.part_size`, at most
:attr:`RepositoryOptions.max_concurrency` in flight, so memory stays bounded whatever the size); the
object appears under its key only when the upload completes, and an abandoned write is aborted (S3, GCS)
or left as uncommitted blocks, which Azure never lists and deletes by itself after a week.
Every request is retried with exponential backoff and jitter, bounded by ``max_retries`` and
``retry_timeout``; then the operation fails with a :class:`RepositoryError` naming the object and the
first line of the store's error (with the code of an XML error body), every known secret masked.

Where the settings come from, first match wins: the options (``--repository-config`` file, its
``repository:`` keys, or the daemon's repository ``options``; ``--s3-endpoint``/``--region`` on the
command line), then the URL query (``?endpoint=...``, ``?region=...`` for S3, ``?allow_http=true``;
secrets are refused in a URL), then the environment variables obstore reads itself. ``http://``
endpoints are allowed only when named explicitly (option, URL or the endpoint variable below), or with
``allow_http``. A credential option that a scheme does not use (``service_account`` for ``s3://``, keys
for ``gs://``) is refused rather than ignored.

``s3://``
    ``endpoint`` (path-style requests when set), ``region``, ``access_key_id``, ``secret_access_key``,
    ``session_token``; environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL(_S3)``, and the rest
    of obstore's ``AWS_*`` (web identity, container credentials, instance metadata).

``az://container/prefix``
    ``endpoint`` (the blob service URL; for an emulator it ends in the account:
    ``http://127.0.0.1:10000/devstoreaccount1``), ``access_key_id`` = the storage **account name**,
    ``secret_access_key`` = the **account key** (base64). Environment: ``AZURE_STORAGE_ACCOUNT_NAME``,
    ``AZURE_STORAGE_ACCOUNT_KEY`` (or ``_ACCESS_KEY``), ``AZURE_STORAGE_SAS_TOKEN``, a service principal
    (``AZURE_CLIENT_ID``, ``AZURE_CLIENT_SECRET``, ``AZURE_TENANT_ID``), workload or managed identity,
    ``AZURE_STORAGE_ENDPOINT``; ``AZURE_STORAGE_USE_EMULATOR=true`` talks to Azurite with its
    well-known ``devstoreaccount1`` account (at ``AZURITE_BLOB_STORAGE_URL``, default
    ``http://127.0.0.1:10000``). The container must exist; etcdwarden never creates one.

``gs://bucket/prefix``
    ``endpoint`` (GCS base URL), ``service_account`` (path of a service-account JSON key file);
    environment: ``GOOGLE_APPLICATION_CREDENTIALS``, ``GOOGLE_SERVICE_ACCOUNT`` (a path),
    ``GOOGLE_SERVICE_ACCOUNT_KEY`` (the JSON itself), ``GOOGLE_BEARER_TOKEN``, ``GOOGLE_BASE_URL``; without
    any, obstore asks the instance metadata server. The bucket must exist. obstore speaks GCS's XML API
    (object PUT, ``?uploads`` multipart, ``?list-type=2`` listing), which the GCS emulators installable
    here (fake-gcs-server 1.54, gcp-storage-emulator) do not implement, so gs:// is not tested against a
    server; its configuration and error paths are.

Secrets are masked in every message this module produces: the credentials given in the options and
the credential-bearing ``AWS_*``/``AZURE_*``/``GOOGLE_*`` environment variables (names containing
SECRET, TOKEN, KEY, PASSWORD or SAS, other than ``*_ID``/``*_FILE``/``*_PATH``/``*_URL``-style ones; plus
``AWS_ACCESS_KEY_ID``), each also percent-encoded, the ``sig`` of a SAS token and the private key of a
JSON service-account key (an Azure account name is no secret: it is part of every URL). The environment
is read once, when the repository is opened — the same moment obstore reads it — so a variable changed
later is neither used nor masked. Bearer tokens, SAS and SigV4 signatures and Shared Key signatures that
appear in a message are masked by their shape, whoever issued them (tokens fetched at run time included).
Not masked: secrets inside credential *files* (``GOOGLE_APPLICATION_CREDENTIALS``, web identity token
files), which this module never reads.
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Self
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import NotFoundError

from etcdwarden.errors import UsageError, setting
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
from etcdwarden.repository.masking import env_secrets, secret_variants
from etcdwarden.repository.masking import first_line as _first_line
from etcdwarden.repository.masking import mask as _mask

if TYPE_CHECKING:
    from obstore import WritableFile
    from obstore.store import AzureConfig, ClientConfig, GCSConfig, ObjectStore, RetryConfig, S3Config

    from etcdwarden.repository.uploads import PendingUpload

log = logging.getLogger(__name__)

#: a 404 while listing or writing: the bucket/container is missing (S3, Azure and GCS spellings)
_MISSING_CONTAINER = re.compile(r"\b(404 Not Found|NoSuchBucket|ContainerNotFound)\b")
#: reads whose "not found" means the object (``stat`` and ``delete`` handle it themselves)
_OBJECT_READS = ("cannot read", "download failed for")
#: obstore's close() reports the abort of the multipart upload when that failed too
_ABORT_FAILED = re.compile(r"Error performing DELETE \S*[?&]uploadId=")

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
            self.repo.upload_failed(self.name, e)

    def _commit(self) -> None:
        assert self.file is not None
        try:
            # parts in flight first: a failed part is reported as itself (obstore's close() aborts the
            # upload on a failure and reports the abort's error instead of the part's)
            self.file.flush()
        except Exception as e:
            self.repo.upload_failed(self.name, e)
        try:
            self.file.close()  # the last part, then complete the multipart upload: the key appears now
        except Exception as e:
            self.file = None
            self.repo.upload_failed(self.name, e)
        self.file = None

    def _discard(self) -> None:
        f, self.file = self.file, None
        if f is not None:
            # leaving the writer's context with an exception aborts the multipart upload; if that fails
            # too, the original error is what the caller reports (it already says an upload may remain)
            try:
                f.__exit__(RepositoryError, RepositoryError("upload abandoned"), None)
            except Exception as e:
                log.warning("could not abort the upload of %s (an incomplete upload may remain): %s",
                            self.repo.where(self.name), _first_line(e, self.repo.secrets))


class ObjectStoreRepository(Repository):
    """Common code of the obstore-backed repositories; subclasses build the store."""

    scheme = ""
    #: what the first URL component names, for messages
    container_word: ClassVar[str] = "bucket"
    #: the URL query options this backend accepts (``?endpoint=...``)
    query_keys: ClassVar[frozenset[str]] = frozenset({"endpoint", "allow_http"})
    #: the :class:`RepositoryOptions` credential fields this backend uses (others are refused)
    credential_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, store: ObjectStore, url: str, options: RepositoryOptions,
                 secrets: list[str] | None = None) -> None:
        self.store = store
        self.url = url
        self.options = options
        self.container = urlsplit(url).netloc
        #: every form of every known secret (options and environment), longest first
        self.secrets = secrets if secrets is not None else \
            secret_variants([*self.option_secrets(options), *env_secrets()])

    @classmethod
    def option_secrets(cls, opts: RepositoryOptions) -> list[str]:
        """The secrets among the options (all credentials, unless the backend says otherwise)."""
        return opts.secrets()

    @classmethod
    def from_url(cls, url: str, options: RepositoryOptions) -> Self:
        base, query = split_query(url)
        unknown = set(query) - cls.query_keys
        if unknown:
            raise UsageError(f"{base}: unknown URL option(s) {', '.join(sorted(unknown))} "
                             f"(known for {cls.scheme}://: {', '.join(sorted(cls.query_keys))})")
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
            raise UsageError(f"{base}: no {cls.container_word} (expected {cls.scheme}://"
                             f"{cls.container_word.upper()}[/PREFIX])")
        prefix = parts.path.strip("/") or None
        display = f"{cls.scheme}://{bucket}" + (f"/{prefix}" if prefix else "")
        given = {f for f in ("access_key_id", "secret_access_key", "session_token", "service_account")
                 if getattr(opts, f)}
        if given - cls.credential_fields:
            raise UsageError(f"{display}: the repository option(s) {', '.join(sorted(given - cls.credential_fields))} "
                             f"do not apply to {cls.scheme}:// (it takes "
                             f"{', '.join(sorted(cls.credential_fields)) or 'none'})")
        # read the environment's secrets now, when obstore reads its variables too
        secrets = secret_variants([*cls.option_secrets(opts), *env_secrets()])
        try:
            store = cls.make_store(bucket, prefix, opts)
        except UsageError:
            raise
        except Exception as e:
            raise RepositoryError(f"{display}: cannot configure the store: "
                                  f"{_first_line(e, secrets)}") from None
        return cls(store, display, opts, secrets)

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

    def mask(self, text: str) -> str:
        """``text`` with every known secret and every credential-shaped token replaced by ``***``."""
        return _mask(text, self.secrets)

    def fail(self, what: str, name: str | None, e: BaseException) -> NoReturn:
        where = self.where(name) if name else self.url
        line = _first_line(e, self.secrets)
        if isinstance(e, NotFoundError | FileNotFoundError) and name is not None and what in _OBJECT_READS:
            raise ObjectNotFound(f"{where}: no such object") from None
        if isinstance(e, NotFoundError | FileNotFoundError) or _MISSING_CONTAINER.search(line):
            # listing or writing: what is missing is the bucket/container (or the upload itself)
            raise RepositoryError(f"{what} {where}: {line} (does the {self.container_word} "
                                  f"{self.container!r} exist? etcdwarden does not create it)") from None
        raise RepositoryError(f"{what} {where}: {line}") from None

    def upload_failed(self, name: str, e: BaseException) -> NoReturn:
        """An upload failed: say so first, then (if it was the abort that failed) that, then what may remain."""
        line = _first_line(e, self.secrets)
        if isinstance(e, NotFoundError | FileNotFoundError) or _MISSING_CONTAINER.search(line):
            self.fail("upload failed for", name, e)
        if _ABORT_FAILED.search(line):  # obstore's close() aborted after a failure, and the abort failed
            line = f"the upload did not complete, and aborting it failed too ({line})"
        raise RepositoryError(f"upload failed for {self.where(name)}: {line}; {self.leftover_hint()}") from None

    def leftover_hint(self) -> str:
        """What a failed upload may leave behind, and what cleans it."""
        return (f"an incomplete multipart upload may remain under {self.url}: `etcdwarden backups list` shows "
                f"it and `etcdwarden backups prune` aborts it once older than {setting('incomplete_grace')}")

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

    def fingerprint(self, name: str) -> str | None:
        """size, last-modified time and ETag (the store's checksum of the object) as it reports them now."""
        try:
            meta = obstore.head(self.store, check_name(name))
        except (NotFoundError, FileNotFoundError):
            return None
        except Exception as e:
            self.fail("cannot stat", name, e)
        return f"{int(meta['size'])}:{meta['last_modified'].isoformat()}:{meta.get('e_tag') or ''}"

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

    def open_write(self, name: str, bulk: bool = False) -> Writer:
        return ObjectStoreWriter(self, check_name(name))

    def delete(self, name: str) -> None:
        try:
            obstore.delete(self.store, check_name(name))
        except (NotFoundError, FileNotFoundError):
            return
        except Exception as e:
            self.fail("cannot delete", name, e)


class S3Repository(ObjectStoreRepository):
    """``s3://bucket/prefix`` on AWS S3 or an S3-compatible store."""

    scheme = "s3"
    query_keys = frozenset({"endpoint", "region", "allow_http"})
    credential_fields = frozenset({"access_key_id", "secret_access_key", "session_token"})

    @classmethod
    def env_endpoint(cls) -> str | None:
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None

    def incomplete_uploads(self) -> builtins.list[PendingUpload]:
        from etcdwarden.repository.uploads import S3Uploads

        return S3Uploads(self).list()

    def abort_upload(self, upload: PendingUpload) -> None:
        from etcdwarden.repository.uploads import S3Uploads

        S3Uploads(self).abort(upload)

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
    """``gs://bucket/prefix``: ``endpoint`` is the base URL, ``service_account`` a JSON key file's path."""

    scheme = "gs"
    credential_fields = frozenset({"service_account"})

    @classmethod
    def env_endpoint(cls) -> str | None:
        return os.environ.get("GOOGLE_BASE_URL") or None

    def incomplete_uploads(self) -> builtins.list[PendingUpload]:
        from etcdwarden.repository.uploads import LIFECYCLE_HINT, UploadsUnavailable

        raise UploadsUnavailable(f"{self.url}: incomplete multipart uploads cannot be listed or aborted for gs:// "
                                 f"by etcdwarden; {LIFECYCLE_HINT}")

    def leftover_hint(self) -> str:
        from etcdwarden.repository.uploads import LIFECYCLE_HINT

        return (f"an incomplete multipart upload may remain under {self.url} (etcdwarden cannot list them on "
                f"gs://: {LIFECYCLE_HINT})")

    @classmethod
    def make_store(cls, bucket: str, prefix: str | None, opts: RepositoryOptions) -> ObjectStore:
        from obstore.store import GCSStore

        config: GCSConfig = {}
        if opts.endpoint:
            config["base_url"] = opts.endpoint.rstrip("/")
        if opts.service_account:
            config["service_account"] = opts.service_account
        return GCSStore(bucket, prefix=prefix, config=config, client_options=cls.client_options(opts),
                        retry_config=cls.retry_config(opts))


class AzureRepository(ObjectStoreRepository):
    """``az://container/prefix``: ``access_key_id`` is the storage account name, ``secret_access_key``
    its key; otherwise obstore's ``AZURE_*`` variables (see the module docstring)."""

    scheme = "az"
    container_word = "container"
    credential_fields = frozenset({"access_key_id", "secret_access_key"})

    @classmethod
    def env_endpoint(cls) -> str | None:
        return os.environ.get("AZURE_STORAGE_ENDPOINT") or os.environ.get("AZURE_ENDPOINT") or None

    @classmethod
    def option_secrets(cls, opts: RepositoryOptions) -> list[str]:
        return [s for s in (opts.secret_access_key,) if s]  # the account name is in every URL: not secret

    def leftover_hint(self) -> str:
        return "its uncommitted blocks are never listed and Azure discards them by itself within 7 days"

    @classmethod
    def make_store(cls, bucket: str, prefix: str | None, opts: RepositoryOptions) -> ObjectStore:
        from obstore.store import AzureStore

        config: AzureConfig = {}
        if opts.endpoint:
            if not opts.endpoint.lower().startswith(("http://", "https://")):
                raise UsageError(f"Azure endpoint {opts.endpoint!r} must start with http:// or https://")
            config["endpoint"] = opts.endpoint.rstrip("/")
        if opts.access_key_id:
            config["account_name"] = opts.access_key_id
        if opts.secret_access_key:
            config["account_key"] = opts.secret_access_key
        return AzureStore(bucket, prefix=prefix, config=config, client_options=cls.client_options(opts),
                          retry_config=cls.retry_config(opts))
