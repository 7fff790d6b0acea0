"""Fill a cluster with realistic Kubernetes-like data quickly (batched Txn puts).

Values look like what kube-apiserver stores: protobuf-encoded objects behind the ``k8s\\x00`` magic
for most resources, JSON for custom resources. Used by ``demo``, the tests and the benchmarks.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient

RESOURCES = ("secrets", "configmaps", "pods", "services/specs", "deployments")
MAX_OPS_PER_TXN = 128  # etcd's default --max-txn-ops


def _k8s_value(resource: str, ns: str, name: str, size: int, rng: random.Random) -> bytes:
    body = rng.randbytes(max(0, size - 64))
    header = f"{resource}/{ns}/{name}".encode()
    return b"k8s\x00\n\x0b\n\x02v1\x12\x05" + header + b"\x12" + body


def _json_value(ns: str, name: str, size: int, rng: random.Random) -> bytes:
    obj = {"apiVersion": "example.com/v1", "kind": "Widget",
           "metadata": {"name": name, "namespace": ns}, "spec": {"data": rng.randbytes(size // 2).hex()}}
    return json.dumps(obj).encode()


def sample_items(count: int, value_size: int = 1024, prefix: str = "/registry",
                 seed: int = 42) -> Iterator[tuple[bytes, bytes]]:
    """``count`` (key, value) pairs spread over resources and namespaces."""
    rng = random.Random(seed)
    for i in range(count):
        ns = f"ns-{i % 17}"
        name = f"obj-{i:08d}"
        if i % 10 == 9:
            key = f"{prefix}/example.com/widgets/{ns}/{name}"
            yield key.encode(), _json_value(ns, name, value_size, rng)
        else:
            resource = RESOURCES[i % len(RESOURCES)]
            key = f"{prefix}/{resource}/{ns}/{name}"
            yield key.encode(), _k8s_value(resource, ns, name, value_size, rng)


async def fill(client: EtcdClient, count: int, value_size: int = 1024, prefix: str = "/registry",
               seed: int = 42, batch: int = MAX_OPS_PER_TXN) -> int:
    """Write ``count`` keys with batched Txn puts; returns the revision after the last write."""
    ops: list[pb.RequestOp] = []
    rev = 0
    for key, value in sample_items(count, value_size, prefix, seed):
        ops.append(pb.RequestOp(request_put=pb.PutRequest(key=key, value=value)))
        if len(ops) >= batch:
            rev = int((await client.txn(pb.TxnRequest(success=ops))).header.revision)
            ops = []
    if ops:
        rev = int((await client.txn(pb.TxnRequest(success=ops))).header.revision)
    return rev
