"""A real Azurite blob service (Microsoft's Azure Storage emulator, from the npm registry) on 127.0.0.1.

``scripts/fetch-azurite.sh`` installs it under ``.cache/azurite`` (the test fails if it cannot). The
blob service alone (``azurite-blob``) listens on a free port, keeps its data in memory, sends no
telemetry, and accepts two accounts: a random one with a random key (what the tests use) and the
well-known ``devstoreaccount1`` that obstore's ``use_emulator`` mode assumes. Containers are created
with one Shared Key–signed ``PUT ?restype=container`` (obstore never creates containers). The process
is stopped by its PID: SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import hmac
import http.client
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from etcdwarden.local.ports import free_port
from etcdwarden.repository.base import RepositoryOptions
from tests.repository.servers import stop_process, tail_log

REPO = Path(__file__).resolve().parents[2]
#: the emulator's documented, public development account (not a secret)
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_binary() -> Path:
    """The ``azurite-blob`` executable, installed by the project's own script."""
    out = subprocess.run([str(REPO / "scripts" / "fetch-azurite.sh")], capture_output=True, text=True, timeout=600,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/fetch-azurite.sh failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class Azurite:
    base: Path
    container: str = "etcdwarden-test"
    account: str = field(default_factory=lambda: "ew" + secrets.token_hex(6))
    key: str = field(default_factory=lambda: base64.b64encode(os.urandom(64)).decode())
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.port = free_port()
        self.base.mkdir(parents=True, exist_ok=True)
        self.log = self.base / "azurite.log"

    @property
    def service(self) -> str:
        """What ``AZURITE_BLOB_STORAGE_URL`` names (obstore appends the account itself)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """The blob endpoint of our account (path-style, as Azurite serves it)."""
        return f"{self.service}/{self.account}"

    def url(self, prefix: str, container: str | None = None) -> str:
        return f"az://{container or self.container}/{prefix}"

    def options(self, **kw: object) -> RepositoryOptions:
        opts = RepositoryOptions(endpoint=self.endpoint, access_key_id=self.account, secret_access_key=self.key,
                                 max_retries=2, retry_timeout=15, init_backoff=0.1, max_backoff=1.0,
                                 connect_timeout=2.0, request_timeout=60.0)
        for k, v in kw.items():
            setattr(opts, k, v)
        return opts

    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_ACCOUNT_NAME": self.account, "AZURE_STORAGE_ACCOUNT_KEY": self.key}

    def start(self, timeout: float = 60.0) -> None:
        binary = azurite_binary()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "AZURITE_"))}
        env["AZURITE_ACCOUNTS"] = f"{self.account}:{self.key};{DEV_ACCOUNT}:{DEV_KEY}"
        argv = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--inMemoryPersistence",
                "--extentMemoryLimit", "2048", "--skipApiVersionCheck", "--disableTelemetry"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.base,
                                         start_new_session=True)
        try:
            self._wait_port(timeout)
            self.create_container(self.container)
        except BaseException:
            self.stop()
            raise

    def _wait_port(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"azurite exited; log:\n{self.tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.1)
        raise TimeoutError(f"azurite did not listen on {self.port} in {timeout}s; log:\n{self.tail()}")

    def create_container(self, name: str, account: str | None = None, key: str | None = None) -> int:
        """``PUT /{account}/{name}?restype=container`` signed with the account key; 201, or 409 if it exists."""
        account, key = account or self.account, key or self.key
        headers = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
        canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
        # VERB, then 11 standard headers (all empty here: Content-Length 0 is signed as ""), then ours
        string_to_sign = "PUT\n" + "\n" * 11 + canonical_headers + f"/{account}/{account}/{name}\nrestype:container"
        mac = hmac.new(base64.b64decode(key), string_to_sign.encode(), hashlib.sha256).digest()
        headers["Authorization"] = f"SharedKey {account}:{base64.b64encode(mac).decode()}"
        headers["Content-Length"] = "0"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("PUT", f"/{account}/{name}?restype=container", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status not in (201, 409):
            raise RuntimeError(f"creating container {name}: HTTP {resp.status} {body[:500]!r}")
        return resp.status

    def stop(self, timeout: float = 5.0) -> None:
        p, self.proc = self.proc, None
        stop_process(p, timeout)

    def tail(self, n: int = 4000) -> str:
        return tail_log(self.log, n)
