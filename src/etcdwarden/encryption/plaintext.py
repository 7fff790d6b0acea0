"""What a decrypted value must look like: a Kubernetes object as kube-apiserver stores it.

AES-CBC has no authentication: a wrong key is caught by the PKCS#7 padding check only, and about one
value in 256 passes it and decrypts to garbage. etcdwarden therefore trusts an AES-CBC decryption only
when the plaintext is a Kubernetes object in one of the encodings kube-apiserver stores: protobuf
(``k8s\\0`` magic), JSON (an object that parses) or CBOR (self-described, ``d9d9f7``). Garbage passes
this with a probability far below 2^-24, so a value that decrypts to something else is either under a
wrong key or is not a Kubernetes object at all; the two cannot be told apart.
"""

from __future__ import annotations

import json

PROTOBUF_MAGIC = b"k8s\x00"
CBOR_MAGIC = b"\xd9\xd9\xf7"


def looks_like_kubernetes_object(data: bytes) -> bool:
    """Protobuf (``k8s\\0``), CBOR (``d9d9f7``) or a JSON object: the encodings kube-apiserver stores."""
    if data.startswith((PROTOBUF_MAGIC, CBOR_MAGIC)):
        return True
    if not data.startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(data), dict)
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError too)
        return False
