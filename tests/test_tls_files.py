"""TLS files are checked before dialling: exit 2 naming the file and the problem (issue 11 item 8).

Without the check gRPC says only "Failed to create security handshaker" (not-PEM CA, mismatched pair)
or that the server rejected the certificate (expired), after the dial timeout.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from etcdwarden.errors import UsageError
from etcdwarden.etcd.tlsfiles import check_tls_files
from etcdwarden.local.cluster import LocalCluster, TLSFiles
from tests.certs import issue
from tests.cli_helpers import cli


def _ca_key(tls: TLSFiles) -> Path:
    return tls.ca.with_suffix(".key")


def _status(cluster: LocalCluster, *flags: str) -> tuple[int, str, float]:
    t0 = time.monotonic()
    r = cli("endpoint", "status", "--endpoints", cluster.endpoints[0], "--dial-timeout", "3s", *flags)
    return r.code, r.err, time.monotonic() - t0


def test_cacert_not_pem(etcd_tls: LocalCluster, tmp_path: Path) -> None:
    t = etcd_tls.tls
    assert t is not None
    text = tmp_path / "ca.txt"
    text.write_text("this is not a certificate\n")
    der = tmp_path / "ca.der"
    der.write_bytes(x509.load_pem_x509_certificate(t.ca.read_bytes()).public_bytes(serialization.Encoding.DER))
    for bad, hint in ((text, "PEM form"), (der, "looks like DER")):
        code, err, took = _status(etcd_tls, "--cacert", str(bad), "--cert", str(t.client_cert), "--key",
                                  str(t.client_key))
        assert code == 2, err
        assert f"--cacert {bad}: not a PEM" in err and hint in err
        assert "handshaker" not in err and "Traceback" not in err
        assert took < 2.5  # refused before dialling, not after the dial timeout


def test_cert_and_key_do_not_match(etcd_tls: LocalCluster) -> None:
    t = etcd_tls.tls
    assert t is not None
    code, err, _ = _status(etcd_tls, "--cacert", str(t.ca), "--cert", str(t.client_cert), "--key", str(t.server_key))
    assert code == 2, err
    assert f"--cert {t.client_cert} and --key {t.server_key} do not match" in err and "CN=etcd-client" in err
    assert "handshaker" not in err


def test_expired_client_certificate(etcd_tls: LocalCluster, tmp_path: Path) -> None:
    t = etcd_tls.tls
    assert t is not None
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    cert, key = issue(tmp_path, t.ca, _ca_key(t), "expired-client", server=False, client=True, days=1,
                      not_before=old)
    code, err, _ = _status(etcd_tls, "--cacert", str(t.ca), "--cert", str(cert), "--key", str(key))
    assert code == 2, err
    assert f"--cert {cert}" in err and "CN=expired-client expired on" in err and "renew it" in err


def test_good_files_still_work(etcd_tls: LocalCluster, tmp_path: Path) -> None:
    t = etcd_tls.tls
    assert t is not None
    # a chain file (leaf first, then the CA) and a key file with an EC PARAMETERS block first are fine
    chain = tmp_path / "chain.crt"
    chain.write_bytes(t.client_cert.read_bytes() + t.ca.read_bytes())
    key = tmp_path / "client.key"
    key.write_bytes(b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
                    + t.client_key.read_bytes())
    code, err, _ = _status(etcd_tls, "--cacert", str(t.ca), "--cert", str(chain), "--key", str(key))
    assert code == 0, err


@pytest.mark.unit
def test_encrypted_key_and_special_files(tmp_path: Path) -> None:
    from tests.certs import make_tls

    t = make_tls(tmp_path / "pki")
    k = serialization.load_pem_private_key(t.client_key.read_bytes(), password=None)
    enc = tmp_path / "enc.key"
    enc.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(UsageError, match="encrypted with a passphrase"):
        check_tls_files(t.ca, t.client_cert, enc)
    with pytest.raises(UsageError, match="--cacert /dev/null: not a regular file"):
        check_tls_files(Path("/dev/null"), None, None)
    with pytest.raises(UsageError, match="not a PEM private key"):
        check_tls_files(t.ca, t.client_cert, t.client_cert)
    # the CA file is not needed (nor checked) when server verification is skipped
    check_tls_files(tmp_path / "missing", t.client_cert, t.client_key, verify_server=False)
