"""OpenShift's restore, all of it (issue 14): the static pod resources bundled like cluster-backup.sh does, put
back on each host by ``restore cluster --restore-resources`` (locally and over SSH), the kubelet restarted,
and bundles that would write outside their place refused whole."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from etcdwarden.backup.static_pods import find_static_pods
from etcdwarden.errors import UsageError
from etcdwarden.local.cluster import LocalCluster, pid_alive, stop_pid
from etcdwarden.local.ports import free_port
from etcdwarden.restore.runtimes.ssh import SSHHost
from etcdwarden.restore.spec import SSHSpec
from etcdwarden.restore.static_pods import HostJob, put_directory, put_manifest
from etcdwarden.restore.tarsafe import UnsafeArchive, extract, repack
from tests.cli_helpers import cli
from tests.restore.helpers import stop_all, write_spec

FAKES = Path(__file__).parent / "fakes"
REVISIONS = {"kube-apiserver": [6, 7], "kube-controller-manager": [7, 8], "kube-scheduler": [5, 6], "etcd": [2, 3]}
RUNNING = {"kube-apiserver": 7, "kube-controller-manager": 7, "kube-scheduler": 6, "etcd": 3}


def host_layout(root: Path) -> tuple[Path, Path]:
    """A control-plane host's ``/etc/kubernetes`` below ``root``: revision directories and live manifests."""
    spr = root / "etc" / "kubernetes" / "static-pod-resources"
    manifests = root / "etc" / "kubernetes" / "manifests"
    for c, ns in REVISIONS.items():
        for n in ns:
            d = spr / f"{c}-pod-{n}"
            (d / "configmaps" / "config").mkdir(parents=True)
            (d / "configmaps" / "config" / "config.yaml").write_text(f"{c} revision {n}\n")
            (d / "configmaps" / "current").symlink_to("config")  # a link inside its own directory
            (d / "secrets" / "serving-cert").mkdir(parents=True)
            key = d / "secrets" / "serving-cert" / "tls.key"
            key.write_text(f"key of {c}-{n}\n")
            key.chmod(0o600)
            (d / f"{c}-pod.yaml").write_text(f"kind: Pod\n# {c} revision {n}: {d}\n")
    enc = spr / "kube-apiserver-pod-7" / "secrets" / "encryption-config"
    enc.mkdir()
    (enc / "encryption-config").write_text("kind: EncryptionConfiguration\n")
    (spr / "kube-apiserver-certs").mkdir()  # not a revision directory
    manifests.mkdir(parents=True)
    # kube-controller-manager runs revision 7 while 8 exists (a rollout not finished): 7 is what runs;
    # kube-scheduler has no live manifest here: the newest revision
    for c in ("kube-apiserver", "kube-controller-manager", "etcd"):
        (manifests / f"{c}-pod.yaml").write_text(f"volumes: [{{hostPath: {{path: {spr}/{c}-pod-{RUNNING[c]}}}}}]\n")
    return spr, manifests


def contents(path: Path) -> dict[str, tuple[str, int]]:
    """Every entry below ``path``: file content or link target, and mode."""
    out: dict[str, tuple[str, int]] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            out[rel] = ("-> " + os.readlink(p), 0)
        elif p.is_file():
            out[rel] = (p.read_text(), p.stat().st_mode & 0o777)
        else:
            out[rel] = ("dir", p.stat().st_mode & 0o777)
    return out


@pytest.mark.unit
def test_finds_the_running_or_newest_revision_of_each_component(tmp_path: Path) -> None:
    spr, manifests = host_layout(tmp_path)
    found = find_static_pods(spr)
    assert found.record()["revisions"] == RUNNING
    assert found.record()["chosen_by"] == {"kube-apiserver": "manifest", "kube-controller-manager": "manifest",
                                           "kube-scheduler": "newest", "etcd": "manifest"}
    assert found.manifests_dir == manifests.resolve()
    for p in spr.glob("etcd-pod-*"):
        p.rename(tmp_path / p.name)
    with pytest.raises(UsageError, match="etcd"):
        find_static_pods(spr)


@pytest.fixture
def fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    state = tmp_path / "fake-state"
    (state / "units" / "kubelet-test.service").mkdir(parents=True)
    (state / "containers").mkdir()
    (state / "units" / "kubelet-test.service" / "cmd").write_text("sleep 600")
    monkeypatch.setenv("PATH", f"{FAKES}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_STATE", str(state))
    yield state
    for pid_file in [*state.glob("units/*/pid"), *state.glob("containers/*/pid")]:
        stop_pid(int(pid_file.read_text().strip()))


def _evil_bundle(path: Path, prefix: str, kind: str) -> None:
    """A tar.gz holding ``prefix``'s files plus one member of ``kind`` that must be refused."""
    with tarfile.open(path, "w:gz") as tar:
        def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add(tarfile.TarInfo(f"{prefix}/ok.txt"), b"fine")
        evil = {
            "traversal": tarfile.TarInfo(f"{prefix}/../../../../../../tmp/etcdwarden-evil"),
            "absolute": tarfile.TarInfo("/tmp/etcdwarden-evil"),
        }.get(kind)
        if evil is not None:
            add(evil, b"evil")
        elif kind == "symlink-escape":
            link = tarfile.TarInfo(f"{prefix}/link")
            link.type, link.linkname = tarfile.SYMTYPE, "../" * 12 + "etc/passwd"
            add(link)
        elif kind == "symlink-sideways":  # inside the archive, but out of the directory being extracted
            link = tarfile.TarInfo(f"{prefix}/link")
            link.type, link.linkname = tarfile.SYMTYPE, "../etcd-pod-3/secrets"
            add(link)
        elif kind == "hardlink-escape":
            add(tarfile.TarInfo("elsewhere/secret"), b"s")
            link = tarfile.TarInfo(f"{prefix}/hard")
            link.type, link.linkname = tarfile.LNKTYPE, "elsewhere/secret"
            add(link)
        elif kind == "device":
            dev = tarfile.TarInfo(f"{prefix}/sda")
            dev.type, dev.devmajor, dev.devminor = tarfile.BLKTYPE, 8, 0
            add(dev)


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink-escape", "symlink-sideways", "hardlink-escape",
                                  "device"])
def test_unsafe_bundles_are_refused_whole(tmp_path: Path, kind: str) -> None:
    prefix = "etc/kubernetes/static-pod-resources/kube-apiserver-pod-7"
    bundle = tmp_path / "static_kuberesources_2026-01-01_000000.tar.gz"
    _evil_bundle(bundle, prefix, kind)
    dest = tmp_path / "kube-apiserver-pod-7.restoring-t"
    with pytest.raises(UnsafeArchive, match="refused"):
        extract(bundle, prefix, dest)
    with pytest.raises(UnsafeArchive):
        repack(bundle, prefix, tmp_path / "part.tar.gz")
    assert not dest.exists() and not (tmp_path / "part.tar.gz").exists()
    assert not Path("/tmp/etcdwarden-evil").exists()
    _evil_bundle(bundle, prefix, "none")
    assert extract(bundle, prefix, dest) == 1 and (dest / "ok.txt").read_text() == "fine"


Tree = dict[str, tuple[str, int]]


def _backup_and_damage(etcd1: LocalCluster, tmp_path: Path) -> tuple[Path, Path, Path, dict[str, Tree]]:
    spr, manifests = host_layout(tmp_path / "host")
    before = {c: contents(spr / f"{c}-pod-{n}") for c, n in RUNNING.items()}
    repo = tmp_path / "backups"
    r = cli("backup", str(repo), "--resources-from-static-pod-resources", str(spr), "--endpoints",
            etcd1.endpoints[0], "-w", "json")
    assert r.code == 0, r.err
    assert "found latest kube-controller-manager-pod" in r.err
    doc = json.loads(r.out)
    sp = doc["resources"]["static_pods"]
    assert sp["revisions"] == RUNNING and sp["directory"] == str(spr.resolve())
    with tarfile.open(next(repo.glob("static_kuberesources_*.tar.gz"))) as tar:
        names = set(tar.getnames())
    prefix = str(spr.resolve()).lstrip("/")
    assert f"{prefix}/kube-apiserver-pod-7/secrets/encryption-config/encryption-config" in names
    assert not any(n.startswith(f"{prefix}/kube-controller-manager-pod-8") for n in names)
    # the disaster: a revision directory lost, another one altered, a manifest broken
    for p in sorted((spr / "kube-apiserver-pod-7").rglob("*"), reverse=True):
        p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
    (spr / "kube-apiserver-pod-7").rmdir()
    (spr / "etcd-pod-3" / "configmaps" / "config" / "config.yaml").write_text("altered\n")
    (manifests / "kube-apiserver-pod.yaml").write_text("broken\n")
    return repo, spr, manifests, before


def test_static_pod_resources_round_trip(etcd1: LocalCluster, tmp_path: Path, fake_env: Path) -> None:
    repo, spr, manifests, before = _backup_and_damage(etcd1, tmp_path)
    spec = write_spec(etcd1, tmp_path / "cluster.yaml", manifests_dir=str(manifests),
                      kubelet_unit="kubelet-test.service")
    etcd_manifest = (manifests / "etcd-pod.yaml").read_text()
    try:
        dry = cli("restore", "cluster", str(repo), "--spec", str(spec), "--dry-run")
        assert dry.code == 0, dry.err
        assert "then, by hand" in dry.out and "--strip-components=" in dry.out
        assert "systemctl restart kubelet-test.service" in dry.out
        assert not (spr / "kube-apiserver-pod-7").exists()
        # the resources put back but the kubelet not restarted: that restart is the step left
        dry = cli("restore", "cluster", str(repo), "--spec", str(spec), "--dry-run", "--restore-resources")
        assert dry.code == 0, dry.err
        left = dry.out.split("then, by hand", 1)[1]
        assert "restart the kubelet on every host" in left and "systemctl restart kubelet-test.service" in left
        assert "--strip-components=" not in left

        r = cli("restore", "cluster", str(repo), "--spec", str(spec), "--restore-resources", "--restart-kubelet",
                "-w", "json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["steps_left"] == []
        for c, n in RUNNING.items():
            assert contents(spr / f"{c}-pod-{n}") == before[c], c
        tag = json.loads(r.out)["tag"]
        aside = spr / f"etcd-pod-3.pre-restore-{tag}"
        assert (aside / "configmaps" / "config" / "config.yaml").read_text() == "altered\n"
        assert not (spr / f"kube-apiserver-pod-7.pre-restore-{tag}").exists()  # there was none to move
        assert contents(spr / "kube-controller-manager-pod-8")  # not in the backup: untouched
        live = (manifests / "kube-apiserver-pod.yaml").read_text()
        assert live == (spr / "kube-apiserver-pod-7" / "kube-apiserver-pod.yaml").read_text()
        assert (manifests.with_name(f"manifests.pre-restore-{tag}") / "kube-apiserver-pod.yaml").read_text() == \
            "broken\n"
        assert (manifests / "kube-scheduler-pod.yaml").read_text().startswith("kind: Pod")
        assert (manifests / "etcd-pod.yaml").read_text() == etcd_manifest  # a process-runtime member's etcd
        assert not list(manifests.glob(".*"))  # no temporary file left where the kubelet reads
        calls = (fake_env / "calls").read_text()
        assert "systemctl restart kubelet-test.service" in calls

        # a bundle that would write outside its place, with hashes that match its manifest: refused whole,
        # before anything is stopped or changed
        evil = tmp_path / "evil"
        evil.mkdir()
        for f in repo.iterdir():
            if f.is_file():
                (evil / f.name).write_bytes(f.read_bytes())
        bundle = next(evil.glob("static_kuberesources_*.tar.gz"))
        _evil_bundle(bundle, f"{str(spr.resolve()).lstrip('/')}/kube-apiserver-pod-7", "traversal")
        manifest = next(evil.glob("backup_*.json"))
        doc = json.loads(manifest.read_text())
        digest, size = hashlib.sha256(bundle.read_bytes()).hexdigest(), bundle.stat().st_size
        doc["files"][bundle.name] = {"sha256": digest, "size": size}
        doc["resources"].update(sha256=digest, size=size)
        manifest.write_text(json.dumps(doc))
        state = tmp_path / "cluster.restore-state.json"
        kept = state.read_text() if state.exists() else None
        asides = sorted(spr.glob("*.pre-restore-*"))
        assert len(asides) == 3  # the three revision directories that were there (kube-apiserver-pod-7 was lost)
        r = cli("restore", "cluster", str(evil), "--spec", str(spec), "--restore-resources")
        assert r.code == 3 and "path traversal" in r.err, r.err
        for m in etcd1.members:  # still served by the etcd the previous restore started: nothing was stopped
            assert pid_alive(int(m.data_dir.with_name(f"{m.data_dir.name}.pid").read_text()))
        assert sorted(spr.glob("*.pre-restore-*")) == asides
        assert not state.exists() or state.read_text() == kept
    finally:
        stop_all(etcd1)


@pytest.mark.etcd
@pytest.mark.slow
def test_static_pod_runtime_holds_a_manifest_while_stopped_and_a_crash_resumes(tmp_path: Path, fake_env: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """m2 runs as a static pod whose runtime moves kube-apiserver-pod.yaml out while the member is stopped: the
    restored manifest replaces that copy, and the runtime's start puts it live; a crash after the resources
    step is continued by the rerun."""
    import yaml

    from tests.restore.test_runtimes import _mixed_cluster

    c, spec, kubelet = _mixed_cluster(tmp_path, fake_env)
    try:
        spr, _ = host_layout(tmp_path / "host")
        r = cli("backup", str(tmp_path / "backups"), "--resources-from-static-pod-resources", str(spr),
                "--endpoints", c.endpoints[0])
        assert r.code == 0, r.err
        doc = yaml.safe_load(spec.read_text())
        for m in doc["members"]:
            m.update(manifests_dir=str(kubelet), kubelet_unit="kubelet-test.service")
        spec.write_text(yaml.safe_dump(doc))
        etcd_manifest = (kubelet / "etcd-pod.yaml").read_text()
        monkeypatch.setenv("ETCDWARDEN_RESTORE_CRASH_AFTER", "resources")
        r = cli("restore", "cluster", str(tmp_path / "backups"), "--spec", str(spec), "--restore-resources",
                "--restart-kubelet")
        assert r.code == 1 and "injected crash after step resources" in r.err, r.err
        stopped = kubelet.parent / "manifests-stopped"
        assert (stopped / "kube-apiserver-pod.yaml").read_text() == \
            (spr / "kube-apiserver-pod-7" / "kube-apiserver-pod.yaml").read_text()
        monkeypatch.delenv("ETCDWARDEN_RESTORE_CRASH_AFTER")
        r = cli("restore", "cluster", str(tmp_path / "backups"), "--spec", str(spec))
        assert r.code == 3 and "--restore-resources" in r.err, r.err  # continued only the way it began
        r = cli("restore", "cluster", str(tmp_path / "backups"), "--spec", str(spec), "--restore-resources",
                "--restart-kubelet", "-w", "json")
        assert r.code == 0, r.err
        assert "continuing the restore" in r.err
        tag = json.loads(r.out)["tag"]
        assert sorted(p.name for p in kubelet.iterdir()) == ["etcd-pod.yaml", "kube-apiserver-pod.yaml",
                                                             "kube-controller-manager-pod.yaml",
                                                             "kube-scheduler-pod.yaml"]
        assert (kubelet / "kube-apiserver-pod.yaml").read_text() == \
            (spr / "kube-apiserver-pod-7" / "kube-apiserver-pod.yaml").read_text()
        assert (kubelet / "etcd-pod.yaml").read_text() == etcd_manifest
        assert (kubelet.with_name(f"manifests.pre-restore-{tag}") / "kube-apiserver-pod.yaml").read_text() == \
            "kube-apiserver"
        assert not list(stopped.iterdir())
        calls = (fake_env / "calls").read_text()
        assert calls.count("systemctl restart kubelet-test.service") == 1
        assert len(list(spr.glob("*.pre-restore-*"))) == 4  # each restored revision once, never twice
    finally:
        pid3 = c.members[2].data_dir.with_name("m3.etcd.pid")
        if pid3.exists():
            stop_pid(int(pid3.read_text().strip()))
        c.stop()


async def _noop_server(tmp_path: Path) -> tuple[asyncssh.SSHAcceptor, int]:
    class NoAuth(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return False

    async def handle(process: asyncssh.SSHServerProcess[str]) -> None:
        proc = await asyncio.create_subprocess_shell(str(process.command), stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        process.stdout.write(out.decode())
        process.stderr.write(err.decode())
        process.exit(proc.returncode or 0)

    port = free_port()
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(NoAuth, "127.0.0.1", port, server_host_keys=[key], process_factory=handle,
                                          sftp_factory=True)
    return server, port


@pytest.mark.unit
def test_put_back_over_ssh(tmp_path: Path) -> None:
    """The same operations through an SSH host: the part is checked and repacked here, extracted there."""
    from etcdwarden.backup.resources import write_bundle

    spr, _ = host_layout(tmp_path / "src")
    bundle = tmp_path / "bundle.tar.gz"
    with open(bundle, "wb") as f:
        write_bundle([spr.resolve() / "kube-apiserver-pod-7"], f)
    prefix = f"{str(spr.resolve()).lstrip('/')}/kube-apiserver-pod-7"
    remote_root, remote_manifests = host_layout(tmp_path / "remote")
    (remote_root / "kube-apiserver-pod-7" / "configmaps" / "config" / "config.yaml").write_text("altered\n")
    (remote_manifests / "kube-apiserver-pod.yaml").write_text("broken\n")
    saved: list[int] = []

    async def go() -> None:
        server, port = await _noop_server(tmp_path)
        host = SSHHost(f"root@127.0.0.1:{port}", SSHSpec(known_hosts="none"))
        try:
            job = HostJob(host, bundle, bundle.name, "t1", tmp_path, {}, lambda: saved.append(1), lambda _t: None)
            dest = str(remote_root / "kube-apiserver-pod-7")
            await put_directory(job, "dir:kube-apiserver", prefix, dest)
            await put_directory(job, "dir:kube-apiserver", prefix, dest)  # a rerun: done, nothing twice
            src = f"{dest}/kube-apiserver-pod.yaml"
            place = str(remote_manifests / "kube-apiserver-pod.yaml")
            assert await put_manifest(job, "manifest:kube-apiserver", src, place, f"{remote_manifests}.pre-restore-t1")
            assert not await put_manifest(job, "manifest:x", f"{dest}/none.yaml", place, "/nowhere")
            _evil_bundle(tmp_path / "evil.tar.gz", prefix, "symlink-escape")
            evil = HostJob(host, tmp_path / "evil.tar.gz", "evil", "t2", tmp_path, {}, lambda: None, lambda _t: None)
            with pytest.raises(UnsafeArchive):
                await put_directory(evil, "dir:kube-apiserver", prefix, dest)
        finally:
            await host.close()
            server.close()
            await server.wait_closed()

    asyncio.run(go())
    assert contents(remote_root / "kube-apiserver-pod-7") == contents(spr / "kube-apiserver-pod-7")
    assert (remote_root / "kube-apiserver-pod-7.pre-restore-t1" / "configmaps" / "config" / "config.yaml").read_text() \
        == "altered\n"
    assert (remote_manifests / "kube-apiserver-pod.yaml").read_text() == \
        (spr / "kube-apiserver-pod-7" / "kube-apiserver-pod.yaml").read_text()
    old = remote_manifests.with_name("manifests.pre-restore-t1") / "kube-apiserver-pod.yaml"
    assert old.read_text() == "broken\n"
    assert not list(remote_root.glob("*.restoring-*")) and saved


ETCD_POD = """apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: openshift-etcd
spec:
  containers:
  - name: etcdctl
    command: [/bin/bash, -c, "trap TERM INT; sleep infinity & wait"]
    env:
    - name: ETCDCTL_API
      value: "3"
    - name: ETCDCTL_CACERT
      value: /etc/kubernetes/static-pod-certs/configmaps/etcd-serving-ca/ca-bundle.crt
    - name: ETCDCTL_CERT
      value: /etc/kubernetes/static-pod-certs/secrets/etcd-all-certs/etcd-peer-master-0.crt
    - name: ETCDCTL_KEY
      value: /etc/kubernetes/static-pod-certs/secrets/etcd-all-certs/etcd-peer-master-0.key
    - name: ETCDCTL_ENDPOINTS
      value: {endpoints}
    volumeMounts:
    - {{mountPath: /etc/kubernetes/manifests, name: static-pod-dir}}
    - {{mountPath: /etc/kubernetes/static-pod-certs, name: cert-dir}}
    - {{mountPath: /var/lib/etcd/, name: data-dir}}
  - name: etcd
    command:
    - /bin/sh
    - -c
    - |
      #!/bin/sh
      set -euo pipefail
      exec etcd --logger=zap --advertise-client-urls=https://${{NODE_IP}}:2379 --data-dir=/var/lib/etcd
  volumes:
  - {{hostPath: {{path: {root}/etc/kubernetes/manifests}}, name: static-pod-dir}}
  - {{hostPath: {{path: {root}/etc/kubernetes/static-pod-resources/etcd-pod-3}}, name: resource-dir}}
  - {{hostPath: {{path: {root}/etc/kubernetes/static-pod-resources/etcd-certs}}, name: cert-dir}}
  - {{hostPath: {{path: {root}/var/lib/etcd}}, name: data-dir}}
"""


def test_endpoints_and_certificates_from_openshift_etcd_pod(etcd_tls: LocalCluster, tmp_path: Path) -> None:
    import shutil

    from etcdwarden.discovery import read_manifest

    t = etcd_tls.tls
    assert t
    root = tmp_path / "host"
    certs = root / "etc" / "kubernetes" / "static-pod-resources" / "etcd-certs"
    (certs / "configmaps" / "etcd-serving-ca").mkdir(parents=True)
    (certs / "secrets" / "etcd-all-certs").mkdir(parents=True)
    shutil.copy(t.ca, certs / "configmaps" / "etcd-serving-ca" / "ca-bundle.crt")
    shutil.copy(t.client_cert, certs / "secrets" / "etcd-all-certs" / "etcd-peer-master-0.crt")
    shutil.copy(t.client_key, certs / "secrets" / "etcd-all-certs" / "etcd-peer-master-0.key")
    manifest = root / "etc" / "kubernetes" / "manifests" / "etcd-pod.yaml"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(ETCD_POD.format(endpoints=",".join(etcd_tls.endpoints), root=root))
    info = read_manifest(manifest)
    assert info.source == "etcdctl env" and info.client_urls == etcd_tls.endpoints
    assert info.cacert == certs / "configmaps" / "etcd-serving-ca" / "ca-bundle.crt"  # mapped to the host
    assert info.key == certs / "secrets" / "etcd-all-certs" / "etcd-peer-master-0.key"
    r = cli("endpoint", "status", "--from-manifest", str(manifest))
    assert r.code == 0, r.err
    assert etcd_tls.endpoints[0] in r.out
