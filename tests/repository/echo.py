"""A loopback HTTP server that refuses every request (403) and echoes what it received in its one-line
error body: the request line, the credential-bearing headers and the body. Stores copy an error body
into their error message, so this shows whether a secret sent to a misbehaving or hostile endpoint
would reach our messages. A thread in the test process, stopped on exit; only 127.0.0.1 is used."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

_ECHOED = ("x-amz-security-token", "authorization")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _refuse(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), 65536)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        parts = [f"echo: {self.command} {self.path}"]
        parts += [f"{h}={self.headers[h]}" for h in _ECHOED if self.headers.get(h)]
        if body:
            parts.append(f"body={body}")
        line = " | ".join(parts).replace("\n", " ")
        self.server.seen.append(line)
        data = line.encode()
        self.send_response(403)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _refuse

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[str] = []


class EchoServer:
    def __init__(self) -> None:
        self.server = _Server()
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def seen(self) -> list[str]:
        """What every request carried (the echo lines), to prove a secret was really sent."""
        return self.server.seen

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
