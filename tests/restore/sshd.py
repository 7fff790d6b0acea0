"""A real OpenSSH ``sshd`` (Debian's, fetched by scripts/fetch-sshd.sh) on a free 127.0.0.1 port.

Nothing is installed system-wide and no user is created: sshd runs with Debian's ``libnss-wrapper``
preloaded (``NSS_WRAPPER_PASSWD``/``NSS_WRAPPER_GROUP`` name files in the test's directory), which
defines the login user (the invoking one, its home in the test's directory, shell ``/bin/sh``) and
the privilege-separation user ``sshd`` that sshd insists on when run as root. Authentication is by public key only,
against an ``AuthorizedKeysFile`` in the test's directory; the host key is generated per test, and a
``known_hosts`` line for it is written, so clients check it for real.

As root, sshd also requires its privilege-separation chroot directory ``/run/sshd`` (root-owned, not
group- or world-writable). If it is missing, sshd is started in a private mount namespace
(``unshare -m``; unshare makes its mounts private, so nothing propagates back) where a fresh tmpfs
covers ``/run`` and holds an empty ``/run/sshd`` (only sshd and its sessions see that /run): the
machine is left exactly as it was. Only where
mount namespaces are not allowed (an unprivileged container) is ``/run/sshd`` created for real,
root-owned 0755, which is what the openssh-server package itself does at boot. Not as root, sshd
needs neither (no privilege separation chroot) and only the invoking user can log in.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import asyncssh

from etcdwarden.local.cluster import stop_pid
from etcdwarden.local.ports import free_port

REPO = Path(__file__).resolve().parents[2]
PRIVSEP_DIR = Path("/run/sshd")
# a tmpfs over /run in sshd's own mount namespace, holding the privsep directory; then sshd itself
# (exec keeps the PID: unshare without --fork execs sh, which execs sshd)
_NAMESPACED = 'mount -t tmpfs -o mode=0755 etcdwarden-sshd /run && mkdir -m 0755 /run/sshd && exec "$0" "$@"'


def sshd_root() -> Path:
    """Where scripts/fetch-sshd.sh unpacked openssh-server and libnss-wrapper (the test fails if it cannot)."""
    out = subprocess.run([str(REPO / "scripts" / "fetch-sshd.sh")], capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, f"scripts/fetch-sshd.sh failed:\n{out.stderr}"
    return Path(out.stdout.strip().splitlines()[-1])


def _privsep_dir_usable() -> bool:
    try:
        st = PRIVSEP_DIR.stat()
    except OSError:
        return False
    return PRIVSEP_DIR.is_dir() and st.st_uid == 0 and not st.st_mode & 0o022


def _launcher() -> list[str]:
    """What to put in front of sshd's command line so that its privsep chroot directory exists."""
    if os.geteuid() != 0 or _privsep_dir_usable():
        return []
    unshare = shutil.which("unshare")
    if unshare:
        probe = subprocess.run([unshare, "-m", "sh", "-c", _NAMESPACED, "true"], capture_output=True, timeout=30,
                               check=False)
        if probe.returncode == 0:
            return [unshare, "-m", "sh", "-c", _NAMESPACED]
    if not PRIVSEP_DIR.exists():  # no namespace here: do what the openssh-server package does
        PRIVSEP_DIR.mkdir(mode=0o755)
        os.chmod(PRIVSEP_DIR, 0o755)  # whatever the umask
    return []  # an existing but unusable /run/sshd is left alone: sshd's own error says what is wrong


class RealSSHD:
    """One sshd under ``base``; :meth:`start` it, :meth:`stop` it (by PID). ``session_env`` is set in
    every session (sshd's ``SetEnv``: what the remote machine's login environment would provide)."""

    def __init__(self, base: Path, session_env: Mapping[str, str] | None = None) -> None:
        self.base = base
        self.session_env = dict(session_env or {})
        self.root = sshd_root()
        self.sshd = self.root / "usr" / "sbin" / "sshd"
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.home = base / "home"
        self.port = 0
        self.host_key = base / "ssh_host_ed25519_key"
        self.client_key = base / "id_ed25519"
        self.known_hosts = base / "known_hosts"
        self.config = base / "sshd_config"
        self.log = base / "sshd.log"
        self.pid_file = base / "sshd.pid"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """``user@127.0.0.1:port``, a member's ``host:`` in a cluster spec."""
        return f"{self.user}@127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _write_files(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(mode=0o700, exist_ok=True)
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        host_key.write_private_key(str(self.host_key))
        os.chmod(self.host_key, 0o600)
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key.write_private_key(str(self.client_key))
        os.chmod(self.client_key, 0o600)
        (self.base / "authorized_keys").write_bytes(client_key.export_public_key())
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_key.export_public_key().decode().strip()}\n")
        uid, gid = os.getuid(), os.getgid()
        passwd = [f"{self.user}:x:{uid}:{gid}:test login:{self.home}:/bin/sh"]
        try:
            group = [f"{grp.getgrgid(gid).gr_name}:x:{gid}:"]
        except KeyError:
            group = [f"login:x:{gid}:"]
        passwd.append("sshd:x:65534:65534:sshd privsep:/nonexistent:/usr/sbin/nologin")
        group.append("nogroup:x:65534:")
        (self.base / "passwd").write_text("\n".join(passwd) + "\n")
        (self.base / "group").write_text("\n".join(group) + "\n")
        lines = [
            "ListenAddress 127.0.0.1",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.base / 'authorized_keys'}",
            "StrictModes no",
            "UsePAM no",
            "AuthenticationMethods publickey",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "PrintMotd no",
            "UseDNS no",
            f"ModuliFile {self.root / 'etc' / 'ssh' / 'moduli'}",
            f"Subsystem sftp {self.root / 'usr' / 'lib' / 'openssh' / 'sftp-server'}",
        ]
        if self.session_env:
            lines.append("SetEnv " + " ".join(f'"{k}={v}"' for k, v in self.session_env.items()))
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 15.0) -> None:
        self.port = free_port()
        self._write_files()
        libdirs = sorted({str(p.parent) for p in self.root.glob("**/lib*.so*")})
        nss = next(self.root.glob("usr/lib/*/libnss_wrapper.so"))
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LD_LIBRARY_PATH": ":".join(libdirs),
            "LD_PRELOAD": str(nss),
            "NSS_WRAPPER_PASSWD": str(self.base / "passwd"),
            "NSS_WRAPPER_GROUP": str(self.base / "group"),
        }
        # sshd re-executes itself for every connection: it must be started with an absolute path
        argv = [*_launcher(), str(self.sshd.resolve()), "-D", "-e", "-f", str(self.config)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while "Server listening on 127.0.0.1" not in self.logs():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"sshd did not start on 127.0.0.1:{self.port}:\n{self.logs()}")
            time.sleep(0.05)
        # the PID we will stop is sshd's own (the launcher exec'd it), as its pid file says
        deadline = time.monotonic() + timeout
        while not self.pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.pid_file.read_text().strip() == str(self.process.pid), self.logs()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the per-connection processes by their PIDs (they would outlive sshd), then sshd by its PID."""
        p = self.process
        if p is None:
            return
        for pid in _children(p.pid):  # first, so that sshd reaps them
            stop_pid(pid, grace)
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=grace)
        self.process = None


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid):
            out.append(int(stat.parent.name))
    return out
