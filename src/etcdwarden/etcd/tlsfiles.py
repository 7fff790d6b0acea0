"""Check the TLS files of a client configuration before dialling.

gRPC reports a CA file that is not PEM, a certificate and key that do not belong together, or an
encrypted key only as "Failed to create security handshaker", and an expired client certificate as a
rejected handshake. Reading the files with ``cryptography`` first turns each into a
:class:`~etcdwarden.errors.UsageError` (exit 2) that names the file and the problem.

Only definite problems are refused: a file gRPC would accept is never rejected here.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from etcdwarden.errors import UsageError

if TYPE_CHECKING:
    from cryptography import x509

MAX_PEM = 4 << 20  # a CA bundle, certificate chain or key is a few KiB; refuse to read a disk image
_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


def _read(path: Path, label: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    except OSError as e:
        raise UsageError(f"{label} {path}: cannot read: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{label} {path}: not a regular file; name the PEM file itself")
        if st.st_size > MAX_PEM:
            raise UsageError(f"{label} {path}: {st.st_size} bytes is not a PEM file (expected a few KiB)")
        try:
            return f.read(MAX_PEM + 1)
        except OSError as e:
            raise UsageError(f"{label} {path}: cannot read: {e.strerror or e}") from None


def _blocks(data: bytes, kinds: tuple[bytes, ...]) -> list[bytes]:
    return [m.group(0) for m in _BLOCK.finditer(data) if m.group(1) in kinds]


def _not_pem_hint(data: bytes) -> str:
    if data[:1] == b"\x30":  # an ASN.1 SEQUENCE: DER
        return "; it looks like DER: convert it with `openssl x509 -inform der -in FILE -out FILE.pem`"
    return ""


def _certificates(path: Path, label: str, what: str) -> list[x509.Certificate]:
    from cryptography import x509

    data = _read(path, label)
    blocks = _blocks(data, (b"CERTIFICATE", b"TRUSTED CERTIFICATE"))
    if not blocks:
        raise UsageError(f"{label} {path}: not a PEM {what} (no \"-----BEGIN CERTIFICATE-----\" block)"
                         + (_not_pem_hint(data) or f"; pass the {what} in PEM form"))
    certs: list[x509.Certificate] = []
    for i, block in enumerate(blocks, 1):
        try:
            certs.append(x509.load_pem_x509_certificate(block.replace(b"TRUSTED CERTIFICATE", b"CERTIFICATE")))
        except ValueError as e:
            raise UsageError(f"{label} {path}: certificate {i} in the file cannot be parsed: {e}") from None
    return certs


def _when(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def check_tls_files(cacert: Path | None, cert: Path | None, key: Path | None, *, verify_server: bool = True,
                    now: dt.datetime | None = None) -> None:
    """Refuse (exit 2) TLS files that cannot work; ``verify_server=False`` skips the CA file."""
    from cryptography.hazmat.primitives import serialization

    now = now or dt.datetime.now(dt.UTC)
    if cacert is not None and verify_server:
        _certificates(cacert, "--cacert", "CA certificate bundle")
    if cert is None or key is None:
        return
    leaf = _certificates(cert, "--cert", "certificate")[0]
    subject = leaf.subject.rfc4514_string() or "(empty subject)"
    if leaf.not_valid_after_utc <= now:
        raise UsageError(f"--cert {cert}: the client certificate {subject} expired on "
                         f"{_when(leaf.not_valid_after_utc)}; renew it (the server would reject the handshake)")
    if leaf.not_valid_before_utc > now + dt.timedelta(minutes=5):
        raise UsageError(f"--cert {cert}: the client certificate {subject} is not valid before "
                         f"{_when(leaf.not_valid_before_utc)} (is this host's clock right?)")
    data = _read(key, "--key")
    blocks = _blocks(data, (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"))
    if not blocks:
        raise UsageError(f"--key {key}: not a PEM private key (no \"-----BEGIN ... PRIVATE KEY-----\" block)"
                         + (_not_pem_hint(data).replace("x509", "pkey") or "; pass the client key in PEM form"))
    block = blocks[0]
    if block.startswith(b"-----BEGIN ENCRYPTED") or b"Proc-Type: 4,ENCRYPTED" in block:
        raise UsageError(f"--key {key}: the private key is encrypted with a passphrase; etcd clients need an "
                         "unencrypted key (`openssl pkey -in KEY -out KEY.plain`)")
    try:
        private = serialization.load_pem_private_key(block, password=None)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--key {key}: the private key cannot be parsed: {e}") from None
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise UsageError(f"--cert {cert} and --key {key} do not match: the key is not the private key of the "
                         f"certificate {subject}; pass the key that was issued with this certificate")
