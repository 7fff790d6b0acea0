"""A small asyncio HTTP/1.1 server for the agent: ``/healthz``, ``/readyz``, ``/metrics``, ``/api/...``.

GET and HEAD only, one request per connection, bounded request size and read time. It listens on
loopback unless configured otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

_MAX_REQUEST = 16 * 1024
_READ_TIMEOUT = 10.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
            503: "Service Unavailable"}


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, obj: Any) -> Response:
        return cls(status, (json.dumps(obj, indent=2, default=str) + "\n").encode())


Handler = Callable[[dict[str, list[str]]], Awaitable[Response]]


class HttpServer:
    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self._server: asyncio.Server | None = None
        self.port = 0
        self.host = ""

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        self._server = await asyncio.start_server(self._handle, host, int(port), reuse_address=True)
        sock = self._server.sockets[0].getsockname()
        self.host, self.port = str(sock[0]), int(sock[1])
        log.info("HTTP listening on %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        try:
            resp, method = await self._dispatch(head)
        except Exception:
            log.exception("HTTP handler failed")
            resp, method = Response.json(500, {"error": "internal error"}), "GET"
        reason = _REASONS.get(resp.status, "OK")
        headers = (f"HTTP/1.1 {resp.status} {reason}\r\nContent-Type: {resp.content_type}\r\n"
                   f"Content-Length: {len(resp.body)}\r\nConnection: close\r\n\r\n")
        try:
            writer.write(headers.encode() + (b"" if method == "HEAD" else resp.body))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, head: bytes) -> tuple[Response, str]:
        if len(head) > _MAX_REQUEST:
            return Response.json(400, {"error": "request too large"}), "GET"
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3:
            return Response.json(400, {"error": "bad request line"}), "GET"
        method, target, _version = parts
        if method not in ("GET", "HEAD"):
            return Response.json(405, {"error": "only GET and HEAD"}), "GET"
        url = urlsplit(target)
        handler = self.routes.get(url.path.rstrip("/") or "/")
        if handler is None:
            return Response.json(404, {"error": f"no such path {url.path}", "paths": sorted(self.routes)}), method
        return await handler(parse_qs(url.query)), method
