"""Secrets obstore reads from the environment are masked in every message of the repository layer, as are
the ones given in the options: a loopback endpoint echoes each request (headers, query, body) in its error
body, which the store copies into its error, so an unmasked secret would show."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from etcdwarden.repository.base import RepositoryError, RepositoryOptions, open_repository
from etcdwarden.repository.masking import env_secrets, secret_variants
from etcdwarden.repository.masking import form_encode as _form_encode
from tests.cli_helpers import cli
from tests.repository.echo import EchoServer

pytestmark = pytest.mark.unit

FAST = RepositoryOptions(max_retries=0, retry_timeout=5, connect_timeout=2, request_timeout=10)


@pytest.fixture
def echo(monkeypatch: pytest.MonkeyPatch) -> Iterator[EchoServer]:
    """The echo endpoint, and an environment free of any store's own variables."""
    for k in list(os.environ):
        if k.upper().startswith(("AWS_", "AZURE_", "GOOGLE_", "AZURITE_")):
            monkeypatch.delenv(k)
    with EchoServer() as server:
        yield server


def _fails_masked(url: str, travelling: dict[str, str], echo: EchoServer, options: RepositoryOptions = FAST,
                  others: tuple[str, ...] = ()) -> str:
    """Provoke the echo; ``travelling`` secrets must have been sent (so the echo carried them), and
    neither they nor ``others`` may be in the message."""
    repo = open_repository(url, options)
    with pytest.raises(RepositoryError) as ei:
        repo.write_bytes("object", b"data")
    msg = str(ei.value)
    sent = " ".join(echo.seen)
    for name, value in travelling.items():
        assert value in sent or _form_encode(value) in sent, (name, sent)  # raw, or in a form body
        assert value not in msg and _form_encode(value) not in msg, (name, msg)
    for value in others:
        assert value not in msg, msg
    assert "echo: " in msg and "***" in msg and "\n" not in msg, msg
    return msg


def test_s3_environment_credentials_are_masked(echo: EchoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"AWS_ACCESS_KEY_ID": "AKIAENVONLY1234567890", "AWS_SECRET_ACCESS_KEY": "env/Secret+Key=1234567890abcdef",
               "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEnvOnlySessionToken/With+Odd=Chars"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    travelling = {k: v for k, v in secrets.items() if k != "AWS_SECRET_ACCESS_KEY"}  # SigV4 never sends it
    msg = _fails_masked(f"s3://bucket/p?endpoint={echo.url}&region=us-east-1", travelling, echo,
                        others=(secrets["AWS_SECRET_ACCESS_KEY"],))
    assert "s3://bucket/p/object" in msg and "403" in msg
    # the CLI: exit 1, one line, no traceback, no secret
    r = cli("backups", "list", f"s3://bucket/p?endpoint={echo.url}")
    assert r.code == 1 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    assert not [v for v in secrets.values() if v in r.out + r.err], r.err


@pytest.mark.parametrize("kind", ["sas", "bearer", "client_secret"])
def test_azure_environment_credentials_are_masked(kind: str, echo: EchoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    secrets = {
        "sas": {"AZURE_STORAGE_SAS_TOKEN": "sv=2022-11-02&sp=rwdl&se=2030-01-01T00:00:00Z&sig=EnvSasSig%2BAbC%3D"},
        "bearer": {"AZURE_STORAGE_TOKEN": "eyJ0eXAiOiJKV1QiEnvOnlyBearerToken.part2.part3"},
        "client_secret": {"AZURE_CLIENT_SECRET": "Cl!ent~Secret+With/Odd=Chars0123"},
    }[kind]
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    if kind == "client_secret":  # the token request goes to the echo endpoint and carries the secret
        monkeypatch.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000001")
        monkeypatch.setenv("AZURE_TENANT_ID", "tenant")
        monkeypatch.setenv("AZURE_AUTHORITY_HOST", echo.url)
    check = dict(secrets)
    if kind == "sas":  # what actually travels in the URL is the signature
        check = {"sig": "EnvSasSig%2BAbC%3D"}
    msg = _fails_masked(f"az://container/p?endpoint={echo.url}/acct", check, echo)
    assert "az://container/p/object" in msg and "403" in msg


def test_gcs_environment_credentials_are_masked(echo: EchoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"GOOGLE_BEARER_TOKEN": "ya29.EnvOnlyGoogleBearerToken-0123456789"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    msg = _fails_masked(f"gs://bucket/p?endpoint={echo.url}", secrets, echo)
    assert "gs://bucket/p/object" in msg and "403" in msg


def test_option_credentials_are_masked_too(echo: EchoServer) -> None:
    opts = RepositoryOptions(**{**vars(FAST), "access_key_id": "AKIAOPTION0123456789",
                                "secret_access_key": "opt-secret", "session_token": "OptionSessionToken/+="})
    _fails_masked(f"s3://bucket/p?endpoint={echo.url}", {"session_token": "OptionSessionToken/+=",
                                                        "access_key_id": "AKIAOPTION0123456789"}, echo, opts)


def test_which_environment_variables_are_secret() -> None:
    env = {"AWS_SECRET_ACCESS_KEY": "s3cret", "AWS_SESSION_TOKEN": "tok-123", "AWS_ACCESS_KEY_ID": "AKID1",
           "AZURE_STORAGE_ACCOUNT_KEY": "a2V5a2V5", "AZURE_STORAGE_ACCESS_KEY": "a2V5a2V6",
           "AZURE_STORAGE_SAS_TOKEN": "sv=1&sig=x", "AZURE_CLIENT_SECRET": "cs-1", "azure_storage_token": "lower",
           "GOOGLE_SERVICE_ACCOUNT_KEY": "{}{}", "GOOGLE_BEARER_TOKEN": "ya29.x",
           # not secrets: names, ids, paths, URLs, flags
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": "http://x", "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/t",
           "AWS_SSE_KMS_KEY_ID": "kms-key-id", "AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_CLIENT_ID": "cid",
           "AZURE_FEDERATED_TOKEN_FILE": "/f", "AZURE_STORAGE_USE_EMULATOR": "true", "AWS_SKIP_SIGNATURE": "true",
           "GOOGLE_APPLICATION_CREDENTIALS": "/key.json", "GOOGLE_SERVICE_ACCOUNT_PATH": "/key.json",
           "AZURE_FABRIC_TOKEN_SERVICE_URL": "http://t", "PATH": "/usr/bin", "HOME_TOKEN": "not a store's",
           "AWS_TOKEN": "no"}  # too short to be a secret: masking it would garble every message
    assert sorted(env_secrets(env.items())) == sorted(
        ["s3cret", "tok-123", "AKID1", "a2V5a2V5", "a2V5a2V6", "sv=1&sig=x", "cs-1", "lower", "{}{}", "ya29.x"])


def test_secret_variants() -> None:
    key = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
           "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/==\n-----END PRIVATE KEY-----\n")
    sa = json.dumps({"type": "service_account", "private_key_id": "0123456789abcdef", "private_key": key,
                     "client_email": "backup@project.iam.gserviceaccount.com"})
    forms = secret_variants(["a+b/c=", "sv=2022&sig=Sig%2Bx%3D&se=2030", sa, ""])
    assert forms == sorted(forms, key=len, reverse=True)
    assert "Cl%21ent%7E" in _form_encode("Cl!ent~") and _form_encode("a b") == "a+b"
    for want in ("a+b/c=", "a%2Bb%2Fc%3D", "Sig%2Bx%3D", "Sig+x=", "0123456789abcdef", key,
                 "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7", json.dumps(key)[1:-1]):
        assert want in forms, want
    assert "" not in forms and "backup@project.iam.gserviceaccount.com" not in forms
