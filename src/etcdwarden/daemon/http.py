"""A small asyncio HTTP/1.1 server for the agent: ``/healthz``, ``/readyz``, ``/metrics``, ``/api/...``.

GET and HEAD only, one request per connection, bounded request size and read time. It listens on
loopback unless configured otherwise, optionally over TLS (an :class:`ssl.SSLContext` from
:mod:`etcdwarden.daemon.httpsec`). A ``guard`` sees every request before its handler and may answer it
instead (401 without a valid bearer token); request headers are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

_MAX_REQUEST = 16 * 1024
_READ_TIMEOUT = 10.0
_HANDSHAKE_TIMEOUT = 10.0
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
        return cls(status, (json.dumps(obj, indent=2, default=str) + "\n").encode(), headers=dict(headers or {}))


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    peer: str


Handler = Callable[[dict[str, list[str]]], Awaitable[Response]]
Guard = Callable[[Request], Response | None]


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]] | None:
    """Request line and headers of an HTTP/1.x request head; None when malformed."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            return None
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


class HttpServer:
    def __init__(self, routes: dict[str, Handler], guard: Guard | None = None) -> None:
        self.routes = routes
        self.guard = guard
        self._server: asyncio.Server | None = None
        self.port = 0
        self.host = ""
        self.tls = False

    async def start(self, listen: str, ssl_context: ssl.SSLContext | None = None) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        self._server = await asyncio.start_server(
            self._handle, host, int(port), reuse_address=True, ssl=ssl_context,
            ssl_handshake_timeout=_HANDSHAKE_TIMEOUT if ssl_context is not None else None)
        sock = self._server.sockets[0].getsockname()
        self.host, self.port = str(sock[0]), int(sock[1])
        self.tls = ssl_context is not None
        log.info("HTTP%s listening on %s:%d", "S" if self.tls else "", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError,
                ssl.SSLError):
            writer.close()
            return
        peer = writer.get_extra_info("peername")
        try:
            resp, method = await self._dispatch(head, str(peer[0]) if isinstance(peer, tuple) and peer else "")
        except Exception:
            log.exception("HTTP handler failed")
            resp, method = Response.json(500, {"error": "internal error"}), "GET"
        reason = _REASONS.get(resp.status, "OK")
        extra = "".join(f"{k}: {v}\r\n" for k, v in resp.headers.items())
        headers = (f"HTTP/1.1 {resp.status} {reason}\r\nContent-Type: {resp.content_type}\r\n"
                   f"Content-Length: {len(resp.body)}\r\n{extra}Connection: close\r\n\r\n")
        try:
            writer.write(headers.encode() + (b"" if method == "HEAD" else resp.body))
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, head: bytes, peer: str = "") -> tuple[Response, str]:
        if len(head) > _MAX_REQUEST:
            return Response.json(400, {"error": "request too large"}), "GET"
        parsed = parse_head(head)
        if parsed is None:
            return Response.json(400, {"error": "bad request"}), "GET"
        method, target, headers = parsed
        if method not in ("GET", "HEAD"):
            return Response.json(405, {"error": "only GET and HEAD"}), "GET"
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        handler = self.routes.get(path)
        if handler is None:
            return Response.json(404, {"error": f"no such path {url.path}", "paths": sorted(self.routes)}), method
        if self.guard is not None:
            denied = self.guard(Request(method, path, parse_qs(url.query), headers, peer))
            if denied is not None:
                return denied, method
        return await handler(parse_qs(url.query)), method
