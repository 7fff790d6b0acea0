"""Where a member's backend quota comes from: its Status, its command line, its manifest, the operator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from etcdwarden.defrag.quota import (
    DEFAULT_QUOTA,
    QuotaFinder,
    local_etcds,
    manifest_quotas,
    parse_quota,
    quota_of_command,
    unknown_reason,
)
from etcdwarden.errors import UsageError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb

pytestmark = pytest.mark.unit

MiB = 1024 * 1024
URL = "http://10.0.0.1:2379"


def member(name: str = "n1", url: str = URL) -> pb.Member:
    return pb.Member(ID=1, name=name, clientURLs=[url])


@pytest.mark.parametrize(("args", "env", "want"), [
    (["--quota-backend-bytes", "16777216"], {}, 16 * MiB),
    (["--quota-backend-bytes=8589934592"], None, 8 * 1024**3),  # a flag wins whatever the environment
    (["-quota-backend-bytes", "0x1000000"], {}, 16 * MiB),  # Go's flag package: one dash, base prefixes
    (["--quota-backend-bytes", "1", "--quota-backend-bytes", "2"], {}, 2),  # the last one counts
    (["--quota-backend-bytes", "0"], {}, DEFAULT_QUOTA),
    (["--quota-backend-bytes", "-1"], {}, None),  # disabled
    (["--name", "n1"], {}, DEFAULT_QUOTA),  # nothing set: etcd's default, known from the whole command line
    (["--name", "n1"], {"ETCD_QUOTA_BACKEND_BYTES": "33554432"}, 32 * MiB),
])
def test_quota_of_command(args: list[str], env: dict[str, str] | None, want: int | None) -> None:
    q = quota_of_command(args, env, "PID 1")
    assert q is not None and q.bytes == want
    assert "PID 1" in q.source


@pytest.mark.parametrize(("args", "env"), [
    (["--name", "n1"], None),  # the environment could not be read: it may set the quota
    (["--quota-backend-bytes", "lots"], {}),
    (["--config-file", "/etc/etcd/etcd.conf.yml"], {}),  # no way to read it
])
def test_unknown_from_command(args: list[str], env: dict[str, str] | None) -> None:
    assert quota_of_command(args, env, "PID 1") is None


def test_config_file_overrides_flags(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "etcd.yml").write_text("name: n1\nquota-backend-bytes: 4194304\n")
    (tmp_path / "rel.yml").write_text("name: n1\n")
    args = ["--config-file", "/etc/etcd.yml", "--quota-backend-bytes", "1"]
    q = quota_of_command(args, {}, "PID 1", config_root=tmp_path)
    assert q is not None and q.bytes == 4 * MiB and "/etc/etcd.yml" in q.source
    q = quota_of_command(["--config-file", "rel.yml"], {}, "PID 1", config_root=Path("/nonexistent"),
                         config_cwd=tmp_path)
    assert q is not None and q.bytes == DEFAULT_QUOTA
    assert quota_of_command(["--config-file", "/gone.yml"], {}, "PID 1", config_root=tmp_path) is None


def _fake_process(proc: Path, pid: int, args: list[str], env: dict[str, str] | None) -> None:
    d = proc / str(pid)
    d.mkdir(parents=True)
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in args) + b"\0")
    if env is not None:
        (d / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in env.items()) + b"\0")


def test_local_processes_match_by_name_and_client_url(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _fake_process(proc, 10, ["/usr/bin/etcd", "--name", "n1", "--advertise-client-urls", f"{URL},http://x:1",
                             "--quota-backend-bytes", "16777216"], {})
    _fake_process(proc, 11, ["etcd", "--name", "n2", "--advertise-client-urls", "http://10.0.0.2:2379"], {})
    _fake_process(proc, 12, ["/bin/sh", "-c", "etcd --quota-backend-bytes 1"], {})  # not etcd itself
    _fake_process(proc, 13, ["etcd", "--name", "n3", "--advertise-client-urls", "http://10.0.0.3:2379"], None)
    (proc / "self").mkdir()
    found = {p.pid: p for p in local_etcds(proc)}
    assert sorted(found) == [10, 11, 13]
    finder = QuotaFinder(None, proc=proc)
    finder.load()
    q1 = finder.find(member("n1"), pb.StatusResponse(version="3.5.1"))
    assert q1 is not None and q1.bytes == 16 * MiB and "PID 10" in q1.source
    q2 = finder.find(member("n2", "http://10.0.0.2:2379"), None)
    assert q2 is not None and q2.bytes == DEFAULT_QUOTA and "default" in q2.source
    # same URL, other name: another cluster's process is not this member
    assert finder.find(member("other"), None) is None
    # n3's environment is unreadable: unknown, and the reason says so and names the flag
    assert finder.find(member("n3", "http://10.0.0.3:2379"), None) is None
    why = unknown_reason(member("n3", "http://10.0.0.3:2379"), pb.StatusResponse(version="3.5.1"), finder)
    assert "etcd 3.5.1 does not report it" in why and "--quota-backend-bytes" in why
    assert "does not run on this host" in unknown_reason(member("n9", "http://10.0.0.9:2379"), None, finder)


def test_precedence_status_then_host_then_operator(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _fake_process(proc, 10, ["etcd", "--name", "n1", "--advertise-client-urls", URL,
                             "--quota-backend-bytes", "16777216"], {})
    finder = QuotaFinder(2 * 1024**3, proc=proc)
    finder.load()
    # etcd 3.6 says what it runs with
    q = finder.find(member("n1"), pb.StatusResponse(version="3.6.0", dbSizeQuota=8 * MiB))
    assert q is not None and q.bytes == 8 * MiB and "reported by etcd 3.6.0" in q.source
    # the command line beats the operator's value, with a note
    q = finder.find(member("n1"), pb.StatusResponse(version="3.5.1"))
    assert q is not None and q.bytes == 16 * MiB
    assert any("--quota-backend-bytes 2147483648 not used for n1" in n for n in finder.notes)
    # the operator's value for a member of another host
    q = finder.find(member("n2", "http://10.0.0.2:2379"), pb.StatusResponse(version="3.5.1"))
    assert q is not None and q.bytes == 2 * 1024**3 and q.source == "--quota-backend-bytes 2147483648"
    assert QuotaFinder(None, proc=None).find(member("n1"), pb.StatusResponse(version="3.5.1")) is None


def test_static_pod_manifest(tmp_path: Path) -> None:
    m = tmp_path / "etcd.yaml"
    m.write_text(f"""
apiVersion: v1
kind: Pod
spec:
  containers:
  - name: etcd
    command: [etcd, --name=cp1, --advertise-client-urls={URL}, --quota-backend-bytes=8589934592]
    env:
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
""")
    [(urls, q)] = manifest_quotas(m)
    assert urls == {URL} and q is not None and q.bytes == 8 * 1024**3 and str(m) in q.source
    finder = QuotaFinder(None, manifest=m, proc=None)
    finder.load()
    found = finder.find(member("cp1"), pb.StatusResponse(version="3.5.1"))
    assert found is not None and found.bytes == 8 * 1024**3
    assert finder.find(member("cp2", "http://10.0.0.2:2379"), None) is None  # another host's member

    m.write_text(f"""
spec:
  containers:
  - command: [etcd, --advertise-client-urls={URL}]
    envFrom: [{{configMapRef: {{name: etcd-env}}}}]
""")
    assert manifest_quotas(m) == [(frozenset({URL}), None)]  # the quota may be in the config map
    for bad in ("", "[1, 2]", "spec: {containers: 3}", "\0\xff", ": :"):
        m.write_text(bad)
        assert manifest_quotas(m) == []
    assert manifest_quotas(tmp_path / "missing.yaml") == []


def test_parse_quota() -> None:
    assert parse_quota("16MiB") == 16 * MiB
    assert parse_quota("0") == 0
    assert parse_quota(" -1 ") == -1
    for bad in ("-1GiB", "lots", "1e400", "9" * 30, "9" * 400 + "TiB"):
        with pytest.raises(UsageError):
            parse_quota(bad)


def test_this_process_is_not_taken_for_etcd() -> None:
    assert all(p.pid != os.getpid() for p in local_etcds())


def test_a_known_source_beats_one_that_cannot_tell(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _fake_process(proc, 10, ["etcd", "--name", "cp1", "--advertise-client-urls", URL], None)  # environ unreadable
    m = tmp_path / "etcd.yaml"
    m.write_text(f"spec: {{containers: [{{command: [etcd, '--advertise-client-urls={URL}', "
                 "'--quota-backend-bytes=4294967296']}]}\n")
    finder = QuotaFinder(None, manifest=m, proc=proc)
    finder.load()
    q = finder.find(member("cp1"), pb.StatusResponse(version="3.5.1"))
    assert q is not None and q.bytes == 4 * 1024**3 and str(m) in q.source
