"""Certificates of a scratch member's own: TLS with client certificates on loopback, no password needed.

Why: a scratch member serves a copy of a cluster's data, Secrets included, on 127.0.0.1. Over plain HTTP any
local user could read it while it runs, and a copy of a cluster with authentication enabled refuses every
request that names no user ("user name is empty"): a point-in-time replay of such a cluster would need the
root password. So the member gets a CA made for it alone, a server certificate for 127.0.0.1 and
``--client-cert-auth``; etcdwarden connects with a client certificate whose common name is ``root``, which etcd
takes as the user when authentication is enabled (the root user exists whenever it is: etcd refuses to enable
authentication without it, and to delete it while enabled). Only the holder of the client key (mode 0600, in
the caller's private directory) can talk to the member.

Keys are ECDSA P-256, valid for a week (a replay takes minutes; the member lives no longer than the command).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from etcdwarden.etcd.config import ClientConfig

#: the user etcd sees in the client certificate (its common name)
ROOT_USER = "root"


@dataclass(frozen=True)
class ScratchTLS:
    """The files of one scratch member's TLS: CA, server and client certificates and keys (PEM)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def member_args(self) -> list[str]:
        """etcd's flags: serve clients over TLS, and only those with a certificate of this CA."""
        return ["--cert-file", str(self.server_cert), "--key-file", str(self.server_key),
                "--trusted-ca-file", str(self.ca), "--client-cert-auth"]

    def channel(self, url: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A synchronous gRPC channel to the member at ``url``, with the client certificate."""
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes(),
                                             private_key=self.client_key.read_bytes(),
                                             certificate_chain=self.client_cert.read_bytes())
        return grpc.secure_channel(url.split("://", 1)[-1], creds, options=list(options))

    def client_config(self, url: str, **timeouts: float) -> ClientConfig:
        """etcdwarden's client configuration for the member at ``url``, with the client certificate."""
        return ClientConfig.from_strings([url], cacert=self.ca, cert=self.client_cert, key=self.client_key,
                                         **timeouts)

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS context for HTTPS requests to the member (``/health``), with the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_scratch_tls(directory: Path) -> ScratchTLS:
    """A new CA, a server certificate for 127.0.0.1 and a client certificate for ``root`` in ``directory``
    (which should be private: the keys are mode 0600)."""
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=7)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("etcdwarden scratch member CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def issue(common_name: str, usages: list[x509.ObjectIdentifier], loopback: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if loopback:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), _key_pem(key)

    # the server certificate serves clients and is etcd's own client certificate (its gateway dials the member)
    server_cert, server_key = issue("127.0.0.1", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                                    loopback=True)
    client_cert, client_key = issue(ROOT_USER, [ExtendedKeyUsageOID.CLIENT_AUTH], loopback=False)
    tls = ScratchTLS(directory / "scratch-ca.pem", directory / "scratch-server.pem",
                     directory / "scratch-server-key.pem", directory / "scratch-client.pem",
                     directory / "scratch-client-key.pem")
    _write(tls.ca, ca.public_bytes(serialization.Encoding.PEM))
    _write(tls.server_cert, server_cert)
    _write(tls.server_key, server_key)
    _write(tls.client_cert, client_cert)
    _write(tls.client_key, client_key)
    return tls
