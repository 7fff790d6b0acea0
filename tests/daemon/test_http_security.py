"""The agent's HTTP endpoint with TLS and a bearer token, against the real server on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import ipaddress
import json
import os
import signal
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest

from etcdwarden.daemon import logs
from etcdwarden.daemon.loader import ConfigError, load_config
from etcdwarden.daemon.service import Daemon
from etcdwarden.daemon.state import MemoryStateStore
from etcdwarden.errors import UsageError
from etcdwarden.etcd.client import EtcdClient
from tests.cli_helpers import cli
from tests.daemon.helpers import FakeClock, ScriptedRunner, arun, daemon_doc
from tests.daemon.test_jobs import NoEtcd

pytestmark = pytest.mark.unit

TOKEN = "s3cr3t-t0ken-0123456789abcdef"  # a test token
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def make_cert(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"etcdwarden-{name}")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def agent_config(tmp_path: Path, agent: str) -> Path:
    path = tmp_path / "d.yaml"
    path.write_text(daemon_doc(tmp_path / "repo", election=False).replace("agent:\n", "agent:\n" + agent))
    return path


def tls_agent(cert: Path, key: Path, token_file: Path | None = None, protect_metrics: bool = False) -> str:
    text = f"  tls: {{certFile: {cert}, keyFile: {key}}}\n"
    if token_file is not None:
        text += f"  auth: {{tokenFile: {token_file}, protectMetrics: {str(protect_metrics).lower()}}}\n"
    return text


def get(url: str, token: str | None = None, cafile: Path | None = None,
        method: str = "GET") -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(url, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile is not None else None
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return int(r.status), r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode(), dict(e.headers)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """The daemon's structured JSON logs, as ``daemon`` configures them."""
    stream = io.StringIO()
    with logs.configured("debug", stream):
        yield stream


@asynccontextmanager
async def serving(config_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(load_config([config_path]), cast(EtcdClient, NoEtcd()), runner_factory=lambda c, k: ScriptedRunner(),
               store=MemoryStateStore(), clock=FakeClock(T0), listen="127.0.0.1:0", agent="web",
               reload=lambda: load_config([config_path]))
    task = asyncio.create_task(d.run())
    try:
        for _ in range(200):
            if d.http.port or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        yield d
    finally:
        d.request_stop()
        await asyncio.wait_for(task, 10)


async def aget(*args: object, **kw: object) -> tuple[int, str, dict[str, str]]:
    return await asyncio.to_thread(get, *args, **kw)  # type: ignore[arg-type]


@arun
async def test_tls_and_token_required_accepted_rejected(tmp_path: Path, captured_logs: io.StringIO) -> None:
    cert, key = make_cert(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    async with serving(agent_config(tmp_path, tls_agent(cert, key, token_file))) as d:
        base = f"https://127.0.0.1:{d.http.port}"
        assert d.http.tls
        # probes stay open
        code, body, _ = await aget(base + "/healthz", cafile=cert)
        assert code == 200 and json.loads(body)["agent"] == "web"
        code, body, _ = await aget(base + "/readyz", cafile=cert)
        assert code in (200, 503) and "ready" in json.loads(body)
        code, _, _ = await aget(base + "/metrics", cafile=cert)  # protectMetrics is off
        assert code == 200
        # /api/* needs the token
        for token in (None, "wrong-token", TOKEN + "x", ""):
            code, body, headers = await aget(base + "/api/backups", token=token, cafile=cert)
            assert code == 401, (token, body)
            assert json.loads(body)["error"].startswith("unauthorized: /api/backups needs the agent's bearer token")
            assert headers["WWW-Authenticate"] == 'Bearer realm="etcdwarden"'
            assert "Traceback" not in body
        code, body, _ = await aget(base + "/api/jobs", cafile=cert)
        assert code == 401
        code, body, _ = await aget(base + "/api/backups", token=TOKEN, cafile=cert)
        assert code == 200 and "etcd-backup-pvc" in json.loads(body)["repositories"]
        code, body, _ = await aget(base + "/api/backups", token=TOKEN, cafile=cert, method="HEAD")
        assert code == 200 and body == ""
        # the certificate is checked: a client that does not trust it fails; plain HTTP gets no answer
        with pytest.raises(urllib.error.URLError):
            await aget(base + "/healthz")
        with pytest.raises((urllib.error.URLError, ConnectionError, http_client_errors())):
            await aget(f"http://127.0.0.1:{d.http.port}/healthz")
    text = captured_logs.getvalue()
    assert TOKEN not in text
    assert "***" not in text  # not even masked: the token was never handed to a log call
    events = [json.loads(line) for line in text.splitlines()]
    refused = [e for e in events if e.get("event") == "http_unauthorized"]
    assert len(refused) == 5 and all("exception" not in e for e in events)
    assert "HTTPS listening on 127.0.0.1" in text


def http_client_errors() -> type[Exception]:
    import http.client

    return http.client.HTTPException


@arun
async def test_token_protects_metrics_when_asked_and_plain_http_on_loopback(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    async with serving(agent_config(tmp_path, f"  auth: {{tokenFile: {token_file}, protectMetrics: true}}\n")) as d:
        base = f"http://127.0.0.1:{d.http.port}"
        assert not d.http.tls
        assert (await aget(base + "/metrics"))[0] == 401
        code, body, _ = await aget(base + "/metrics", token=TOKEN)
        assert code == 200 and "etcdwarden_daemon_info" in body
        assert (await aget(base + "/healthz"))[0] == 200


@arun
async def test_sighup_reloads_certificate_and_token_and_a_bad_reload_keeps_them(
        tmp_path: Path, captured_logs: io.StringIO) -> None:
    cert, key = make_cert(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    async with serving(agent_config(tmp_path, tls_agent(cert, key, token_file))) as d:
        d.install_signal_handlers()
        base = f"https://127.0.0.1:{d.http.port}"
        first = cert.read_bytes()
        # rotate: new certificate and key in the same files, a new token; then SIGHUP
        cert2, key2 = make_cert(tmp_path, "next")
        cert.write_bytes(cert2.read_bytes())
        key.write_bytes(key2.read_bytes())
        token_file.write_text("n3w-t0ken-abcdefghijklmnop\n")
        reloads = d.metrics.view
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if d.security.current.stamps.get(str(token_file)) and not d.security.changed(d.config.agent):
                break
            await asyncio.sleep(0.01)
        assert reloads.config_ok
        assert (await aget(base + "/healthz", cafile=cert2))[0] == 200  # the new certificate is served
        old_ca = tmp_path / "old.crt"
        old_ca.write_bytes(first)
        with pytest.raises(urllib.error.URLError):
            await aget(base + "/healthz", cafile=old_ca)
        assert (await aget(base + "/api/jobs", token=TOKEN, cafile=cert2))[0] == 401
        assert (await aget(base + "/api/jobs", token="n3w-t0ken-abcdefghijklmnop", cafile=cert2))[0] == 200
        # a key that does not match the certificate: the reload fails, the running certificate stays
        _, other_key = make_cert(tmp_path, "other")
        key.write_bytes(other_key.read_bytes())
        assert not await d.reload()
        assert not d.metrics.view.config_ok and d.metrics.view.config_reload_failures == 1
        assert (await aget(base + "/healthz", cafile=cert2))[0] == 200
        assert (await aget(base + "/api/jobs", token="n3w-t0ken-abcdefghijklmnop", cafile=cert2))[0] == 200
        # files changing on disk are noticed too (a Kubernetes Secret volume is updated without a signal)
        key.write_bytes(key2.read_bytes())
        assert d.security.changed(d.config.agent)
        assert await d.reload_http_files()
        assert d.metrics.view.config_ok and not d.security.changed(d.config.agent)
    text = captured_logs.getvalue()
    assert "n3w-t0ken" not in text and TOKEN not in text
    assert "agent.tls: cannot use certificate" in text


def test_non_loopback_without_tls_is_refused_with_one_clear_message(tmp_path: Path) -> None:
    path = agent_config(tmp_path, "  listen: 0.0.0.0:9796\n")
    with pytest.raises(ConfigError) as ei:
        load_config([path])
    (problem,) = ei.value.problems
    assert str(problem).endswith(
        "agent.listen: 0.0.0.0:9796 is not a loopback address: the agent would serve the backup catalog, the "
        "metrics and any bearer token over plain HTTP; set agent.tls (certFile and keyFile), or "
        "agent.insecureHttp: true to accept plain HTTP on this address")
    res = cli("config", "validate", str(path))
    assert res.code == 2 and res.err.count("is not a loopback address") == 1
    for listen in ("'[::]:9796'", "10.0.0.1:9796", "etcd-1.example.com:9796"):
        with pytest.raises(ConfigError):
            load_config([agent_config(tmp_path, f"  listen: {listen}\n")])
    for listen in ("127.0.0.1:9796", "127.0.0.2:9796", "'[::1]:9796'", "localhost:9796"):
        load_config([agent_config(tmp_path, f"  listen: {listen}\n")])
    # the explicit opt-in, or TLS
    cfg = load_config([agent_config(tmp_path, "  listen: 0.0.0.0:9796\n  insecureHttp: true\n")])
    assert cfg.agent.insecure_http
    cfg = load_config([agent_config(tmp_path, "  listen: 0.0.0.0:9796\n  tls: {certFile: /c.pem, keyFile: /k.pem}\n")])
    assert cfg.agent.tls is not None
    # --listen is held to the same rule (refused before any connection to etcd)
    res = cli("daemon", "--config", str(agent_config(tmp_path, "")), "--listen", "0.0.0.0:0")
    assert res.code == 2 and "--listen 0.0.0.0:0 is not a loopback address" in res.err


@pytest.mark.parametrize(("agent", "expected"), [
    ("  tls: {certFile: /c.pem}\n", "agent.tls.keyFile: required field is missing"),
    ("  tls: {certFile: /c.pem, keyFile: /k.pem, caFile: /ca.pem}\n", "agent.tls.caFile: unknown field 'caFile'"),
    ("  auth: {token: abc}\n", "agent.auth.token: unknown field 'token'"),
    ("  auth: {tokenFile: ''}\n", "agent.auth.tokenFile: String should have at least 1 character"),
])
def test_bad_tls_and_auth_fields(tmp_path: Path, agent: str, expected: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config([agent_config(tmp_path, agent)])
    found = [str(p) for p in ei.value.problems]
    assert any(expected in f for f in found), found


@arun
async def test_unusable_files_stop_the_start_with_the_file_named(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    missing = tmp_path / "absent.key"
    with pytest.raises(UsageError, match=f"agent.tls.keyFile {missing}: no such file"):
        async with serving(agent_config(tmp_path, tls_agent(cert, missing))):
            pass
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        async with serving(agent_config(tmp_path, tls_agent(cert, key, empty))):
            pass
