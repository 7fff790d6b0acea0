"""Incomplete multipart uploads: list them under a repository's prefix and abort them (S3).

A write into an object store streams into a multipart upload; a run killed mid-stream (SIGKILL, a lost
node) leaves that upload behind: invisible in the listing of objects, but its parts are stored (and
billed) until someone aborts it. obstore can neither list nor abort an upload it did not start itself,
so for ``s3://`` this module speaks the two S3 calls directly (``ListMultipartUploads``,
``AbortMultipartUpload``), signed with AWS Signature Version 4 from the repository's static credentials
(the options, else ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``), over the
same endpoint (path-style requests, like obstore), proxies and TLS checks as any HTTPS client.

Where that is not possible the answer is :class:`UploadsUnavailable`, whose message says what to do
instead: a bucket lifecycle rule that aborts incomplete multipart uploads after a day
(``AbortIncompleteMultipartUpload``; on GCS the ``AbortIncompleteMultipartUpload`` lifecycle action).
Azure needs nothing: it never lists uncommitted blocks and discards them by itself after a week.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit
from xml.etree import ElementTree

from etcdwarden.repository.base import PendingUpload, RepositoryError, RepositoryOptions, UploadsUnavailable

__all__ = ["LIFECYCLE_HINT", "PendingUpload", "S3Uploads", "UploadsUnavailable", "pending_uploads", "sign"]

LIFECYCLE_HINT = ("set a lifecycle rule on the bucket that aborts incomplete multipart uploads after a day "
                  "(S3: AbortIncompleteMultipartUpload with DaysAfterInitiation: 1; GCS: the "
                  "AbortIncompleteMultipartUpload lifecycle action with age: 1)")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None


def _uri(text: str, safe: str = "") -> str:
    """SigV4's URI encoding: every byte but A-Z a-z 0-9 - _ . ~ (and ``safe``) percent-encoded, upper case."""
    return quote(text, safe="-_.~" + safe)


def sign(method: str, url: str, creds: Credentials, region: str, now: dt.datetime,
         payload_sha256: str = _EMPTY_SHA256) -> dict[str, str]:
    """The headers that sign ``method url`` with AWS Signature Version 4 (service ``s3``).

    ``url``'s path must already be encoded as it will be sent; its query is re-encoded canonically."""
    parts = urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    headers = {"host": parts.netloc, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date}
    if creds.session_token:
        headers["x-amz-security-token"] = creds.session_token
    query = []
    for item in parts.query.split("&") if parts.query else []:
        k, _, v = item.partition("=")
        query.append((_uri(unquote(k)), _uri(unquote(v))))
    canonical_query = "&".join(f"{k}={v}" for k, v in sorted(query))
    signed = ";".join(sorted(headers))
    canonical_headers = "".join(f"{k}:{headers[k].strip()}\n" for k in sorted(headers))
    canonical = "\n".join([method, parts.path or "/", canonical_query, canonical_headers, signed, payload_sha256])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + creds.secret_access_key).encode()
    for piece in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, piece.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {k: v for k, v in headers.items() if k != "host"}
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key_id}/{scope}, SignedHeaders={signed}, "
                            f"Signature={signature}")
    return out


class S3Repo(Protocol):
    """What :class:`S3Uploads` needs of an ``s3://`` repository (the object store one, without importing it)."""

    url: str
    container: str
    options: RepositoryOptions

    def mask(self, text: str) -> str: ...

    def where(self, name: str) -> str: ...


class S3Uploads:
    """ListMultipartUploads / AbortMultipartUpload for one ``s3://`` repository."""

    def __init__(self, repo: S3Repo) -> None:
        self.repo = repo
        opts = repo.options
        key_id = opts.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = opts.secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not key_id or not secret:
            raise UploadsUnavailable(
                f"{repo.url}: incomplete multipart uploads are listed and aborted with an access key only (the "
                f"repository uses other credentials); {LIFECYCLE_HINT}")
        token = opts.session_token or (os.environ.get("AWS_SESSION_TOKEN") if not opts.access_key_id else None)
        self.creds = Credentials(key_id, secret, token)
        self.region = opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") \
            or "us-east-1"
        endpoint = (opts.endpoint or f"https://s3.{self.region}.amazonaws.com").rstrip("/")
        if endpoint.lower().startswith("http://"):
            allowed = opts.allow_http if opts.allow_http is not None else bool(opts.endpoint)
            if not allowed:
                raise UploadsUnavailable(f"{repo.url}: {endpoint} is plain http and allow_http is off")
        self.base = f"{endpoint}/{_uri(repo.container)}"
        path = urlsplit(repo.url).path.strip("/")
        self.prefix = path + "/" if path else ""
        self.timeout = opts.request_timeout
        self.attempts = max(1, opts.max_retries + 1)

    def _request(self, method: str, url: str, what: str) -> bytes:
        delay = self.repo.options.init_backoff
        for attempt in range(self.attempts):
            headers = sign(method, url, self.creds, self.region, dt.datetime.now(dt.UTC))
            req = urllib.request.Request(url, method=method, headers=headers)  # noqa: S310 - http(s), checked
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                    body: bytes = resp.read()
                    return body
            except urllib.error.HTTPError as e:
                body = e.read()
                if e.code < 500 or attempt + 1 == self.attempts:
                    raise RepositoryError(self.repo.mask(f"{what}: HTTP {e.code}{_s3_error(body)}")) from None
            except (urllib.error.URLError, OSError) as e:
                if attempt + 1 == self.attempts:
                    reason = getattr(e, "reason", e)
                    raise RepositoryError(self.repo.mask(f"{what}: {reason}")) from None
            time.sleep(min(delay, self.repo.options.max_backoff))
            delay *= 2
        raise AssertionError("unreachable")

    def list(self) -> list[PendingUpload]:
        out: list[PendingUpload] = []
        key_marker = upload_marker = ""
        while True:
            query = f"uploads=&prefix={_uri(self.prefix)}"
            if key_marker:
                query += f"&key-marker={_uri(key_marker)}&upload-id-marker={_uri(upload_marker)}"
            body = self._request("GET", f"{self.base}?{query}",
                                 f"cannot list the incomplete uploads of {self.repo.url}")
            root = _parse_xml(body)
            if root is None:
                raise RepositoryError(f"{self.repo.url}: the store's list of incomplete uploads is not XML")
            for up in root.iter():
                if _tag(up) != "Upload":
                    continue
                key, uid, when = _text(up, "Key"), _text(up, "UploadId"), _text(up, "Initiated")
                if not key or not uid or not key.startswith(self.prefix):
                    continue
                name = key[len(self.prefix):]
                if not name or "/" in name:
                    continue  # below the prefix: not an object of this repository
                try:
                    initiated = dt.datetime.fromisoformat(when.replace("Z", "+00:00")) if when else None
                except ValueError:
                    initiated = None
                out.append(PendingUpload(name, key, uid, initiated or dt.datetime.fromtimestamp(0, dt.UTC)))
            if (_child_text(root, "IsTruncated") or "").lower() != "true":
                return out
            key_marker = _child_text(root, "NextKeyMarker") or ""
            upload_marker = _child_text(root, "NextUploadIdMarker") or ""
            if not key_marker:
                return out

    def abort(self, upload: PendingUpload) -> None:
        url = f"{self.base}/{_uri(upload.key, safe='/')}?uploadId={_uri(upload.upload_id)}"
        try:
            self._request("DELETE", url, f"cannot abort the incomplete upload of {self.repo.where(upload.name)}")
        except RepositoryError as e:
            if "NoSuchUpload" in str(e):
                return  # completed or aborted meanwhile
            raise


def _tag(el: ElementTree.Element) -> str:
    return el.tag.rsplit("}", 1)[-1]


def _text(el: ElementTree.Element, name: str) -> str:
    for child in el:
        if _tag(child) == name:
            return (child.text or "").strip()
    return ""


def _child_text(root: ElementTree.Element, name: str) -> str | None:
    return _text(root, name) or None


def _parse_xml(body: bytes) -> ElementTree.Element | None:
    """An S3 response document; ``None`` if it is not XML, or declares a DTD or entities (S3 never does:
    refusing them leaves no room for entity expansion, and ElementTree resolves no external ones)."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body or len(body) > 64 << 20:
        return None
    try:
        return ElementTree.fromstring(body)  # noqa: S314 - no DTD, no entities (checked above)
    except ElementTree.ParseError:
        return None


def _s3_error(body: bytes) -> str:
    root = _parse_xml(body)
    if root is None:
        return ""
    code, message = _text(root, "Code"), _text(root, "Message")
    return (f": {code}" if code else "") + (f" ({message})" if message else "")


def pending_uploads(repo: Any) -> tuple[list[PendingUpload], str | None]:
    """The incomplete uploads under ``repo`` (a :class:`~etcdwarden.repository.base.Repository`), and a note
    when they cannot be listed (what to do instead), never an error."""
    try:
        return list(repo.incomplete_uploads()), None
    except UploadsUnavailable as e:
        return [], str(e)
    except RepositoryError as e:
        return [], f"incomplete uploads could not be listed: {e}"
