"""``cluster.yaml``: the members of the cluster to restore and how each one is run.

Example::

    token: my-restored-cluster          # optional; default: a new token per restore
    repository: s3://bucket/etcd        # optional: the backups (doctor compares survivors with the newest)
    members:
      - name: m1
        peer_urls: [https://10.0.0.1:2380]
        client_urls: [https://10.0.0.1:2379]
        data_dir: /var/lib/etcd
        runtime: static-pod              # process (default) | systemd | static-pod
        host: core@10.0.0.1              # localhost (default) or [user@]host[:port] over SSH
        manifest: /etc/kubernetes/manifests/etcd-pod.yaml
        also_stop: [kube-apiserver-pod.yaml]
        static_pod_resources: /etc/kubernetes/static-pod-resources   # restore --restore-resources puts the
                                         # bundled revision directories back here (default: where they were)
        kubelet_unit: kubelet.service    # restarted by restore --restart-kubelet
      - name: m2
        runtime: systemd
        unit: etcd.service
        ...
      - name: m3
        runtime: process                 # etcdwarden starts etcd itself and keeps its PID in pid_file
        etcd: /usr/local/bin/etcd
        extra_args: [--quota-backend-bytes, "8589934592"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from etcdwarden.errors import UsageError

LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1", "local")


class SSHSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = None
    port: int = 22
    key: str | None = None
    known_hosts: str | None = None  # a known_hosts file; "none" disables host key checking (tests only)
    sudo: bool = False  # prefix remote commands with sudo -n


class MemberSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    peer_urls: list[str]
    client_urls: list[str]
    data_dir: str
    runtime: Literal["process", "systemd", "static-pod"] = "process"
    host: str = "localhost"
    etcdutl: str | None = None  # etcdutl on the member's host (remote members; local ones use --etcdutl)
    # process
    etcd: str | None = None
    extra_args: list[str] = Field(default_factory=list)
    pid_file: str | None = None
    log_file: str | None = None
    # systemd
    unit: str = "etcd.service"
    # static-pod
    manifest: str = "/etc/kubernetes/manifests/etcd-pod.yaml"
    stopped_dir: str | None = None
    container: str = "etcd"
    also_stop: list[str] = Field(default_factory=list)
    # OpenShift's static pod resources (restore cluster --restore-resources / --restart-kubelet)
    static_pod_resources: str | None = None  # default: the directory the backup recorded
    manifests_dir: str | None = None  # default: the directory of ``manifest``
    kubelet_unit: str = "kubelet.service"

    @property
    def is_local(self) -> bool:
        return self.host.strip().lower() in LOCAL_HOSTS

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def pid_path(self) -> Path:
        return Path(self.pid_file) if self.pid_file else self.data_path.with_name(f"{self.data_path.name}.pid")

    @property
    def log_path(self) -> Path:
        return Path(self.log_file) if self.log_file else self.data_path.with_name(f"{self.data_path.name}.log")

    @property
    def peer(self) -> str:
        return ",".join(self.peer_urls)


class ClusterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    members: list[MemberSpec] = Field(min_length=1)
    token: str | None = None
    repository: str | None = None  # the backup repository (doctor compares the survivors with its newest)
    ssh: SSHSpec = Field(default_factory=SSHSpec)

    @classmethod
    def load(cls, path: Path) -> ClusterSpec:
        try:
            doc = yaml.safe_load(path.read_text())
        except OSError as e:
            raise UsageError(f"--spec {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise UsageError(f"--spec {path}: not valid YAML: {e}") from None
        try:
            spec = cls.model_validate(doc)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise UsageError(f"--spec {path}: {where}: {first['msg']} ({e.error_count()} problem(s))") from None
        spec.check()
        return spec

    def check(self) -> None:
        seen: dict[str, set[str]] = {"name": set(), "peer": set(), "data": set()}
        for m in self.members:
            for kind, value in (("name", m.name), ("peer", m.peer), ("data", f"{m.host}:{m.data_dir}")):
                if value in seen[kind]:
                    raise UsageError(f"cluster spec: two members share the {kind} {value}")
                seen[kind].add(value)
            if not m.peer_urls or not m.client_urls:
                raise UsageError(f"cluster spec: member {m.name} needs peer_urls and client_urls")
            if m.runtime == "process" and not m.is_local:
                raise UsageError(f"cluster spec: member {m.name}: the process runtime runs local members only")
            if not Path(m.data_dir).is_absolute():
                raise UsageError(f"cluster spec: member {m.name}: data_dir must be an absolute path")

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={u}" for m in self.members for u in m.peer_urls)

    def member(self, name: str) -> MemberSpec:
        for m in self.members:
            if m.name == name:
                return m
        raise UsageError(f"no member {name!r} in the cluster spec (members: {', '.join(m.name for m in self.members)})")
