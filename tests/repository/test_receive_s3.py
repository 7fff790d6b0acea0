"""``etcdwarden receive`` into a real S3 gateway (SeaweedFS): the full backup, segments and the receiver's state
go through the object store; a second receiver is refused by the lease in the state object (no flock there)."""

from __future__ import annotations

from pathlib import Path

from etcdwarden.local.cluster import LocalCluster
from etcdwarden.repository.base import open_repository
from etcdwarden.repository.window import read_window
from tests.backup.receiving import captured, history, start_receiver, stop, wait_receiving, workload
from tests.repository.seaweed import SeaweedS3


def test_receive_into_s3(etcd1: LocalCluster, seaweed: SeaweedS3, tmp_path: Path) -> None:
    eps = etcd1.endpoints
    url = seaweed.url("receive")
    repo = open_repository(url, seaweed.options())
    args = ("--s3-endpoint", seaweed.endpoint, "--region", "us-east-1")
    proc = start_receiver(eps, url, *args, env=seaweed.env(), cwd=tmp_path)
    try:
        wait_receiving(repo, proc)
        second = start_receiver(eps, url, *args, env=seaweed.env(), cwd=tmp_path)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 3 and "another receiver" in err, err
        end = workload(eps, 60, "s3")
        wait_receiving(repo, proc, end)
    finally:
        code, err = stop(proc)
    assert code == 143, err
    (chain,) = read_window(repo, rehash=True).chains
    assert chain.broken is None and chain.end.revision == end and chain.segments
    revs, _, base = captured(repo)
    assert revs == history(eps, base + 1, end)
