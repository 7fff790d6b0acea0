"""Safety checks shared by every restore: named overrides, versions, release, ownership, data dirs in use.

Every refusal is a :class:`SafetyRefusal` (exit 3) naming the ``--force=CHECK`` that overrides it;
``--force`` alone overrides every check (the message still says which one fired).
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from etcdwarden.errors import SafetyRefusal, UsageError

CHECKS = {
    "version": "the backup's etcd minor version differs from etcdutl's or the target etcd's",
    "release": "the backup was taken on another release (the same z-stream rule)",
    "resources": "the resources bundle listed in the manifest is missing",
    "cluster-id": "the backup comes from another cluster than the one being restored",
    "in-use": "a data directory is in use (a process has it or its files open, holds its lock, or its member "
              "answers on the URLs recorded in it), or by a process the member's runtime does not manage",
    "healthy": "member replace of a member that is healthy",
    "bump": "--bump-revision was asked for but the etcdutl cannot bump (restore WITHOUT the bump)",
    "structure": "restore quorum from a survivor whose data fails the structure check (backend or WAL)",
    "not-most-advanced": "restore quorum from a survivor while another member holds a higher term/index",
    "quorum": "restore quorum while the cluster still has quorum",
}


@dataclass(frozen=True)
class Forces:
    """The checks the user chose to override (``--force`` = all, ``--force=version,release`` = some)."""

    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, values: Iterable[str] | None) -> Forces:
        names: set[str] = set()
        for v in values or ():
            for part in str(v).split(","):
                p = part.strip()
                if not p:
                    continue
                if p != "all" and p not in CHECKS:
                    raise UsageError(f"--force={p}: unknown check; one of all, {', '.join(sorted(CHECKS))}")
                names.add(p)
        return cls(frozenset(names))

    def __contains__(self, name: object) -> bool:
        return "all" in self.names or name in self.names

    def as_list(self) -> list[str]:
        return sorted(self.names)


def refuse(check: str, message: str) -> SafetyRefusal:
    return SafetyRefusal(message, f"--force={check}")


_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def minor(version: str) -> tuple[int, int]:
    m = _VERSION_RE.match(version.strip())
    if not m:
        raise UsageError(f"cannot read the etcd version {version!r}; expected e.g. 3.5.1")
    return int(m.group(1)), int(m.group(2))


def check_versions(backup: str | None, etcdutl: str, target: str | None, forces: Forces) -> list[str]:
    """The backup's etcd minor version must equal etcdutl's and the target etcd's (etcd-internals §7.3)."""
    warnings: list[str] = []
    if backup is None:
        warnings.append("the backup records no etcd version: version compatibility not checked")
        return warnings
    for what, v in (("etcdutl", etcdutl), ("the target etcd", target)):
        if v is None:
            warnings.append(f"the version of {what} is unknown (give --etcd-version): not checked")
            continue
        if minor(v) != minor(backup):
            msg = (f"the backup was taken from etcd {backup} but {what} is {v}: restore with the etcdutl of the "
                   "same minor version as the etcd that will run the data (upgrade one minor at a time, after "
                   "the restore)")
            if "version" not in forces:
                raise refuse("version", msg)
            warnings.append(msg + " (--force=version)")
    return warnings


def check_bump(requested: int, version: str, supported: bool, where: str, forces: Forces) -> list[str]:
    """``--bump-revision N`` with an etcdutl that lacks the flag refuses (``--force=bump``: restore unbumped)."""
    if not requested or supported:
        return []
    msg = (f"--bump-revision {requested} --mark-compacted: etcdutl {version}{where} does not support these flags "
           "(etcdutl 3.5.10+ and 3.6 do): pass --etcdutl PATH of such an etcdutl of the backup's minor version, or "
           "restore without --bump-revision/--mark-compacted and restart every kube-apiserver afterwards")
    if "bump" not in forces:
        raise refuse("bump", msg)
    return [msg + "; restoring WITHOUT a revision bump (--force=bump)"]


def check_release(recorded: str | None, given: str | None, forces: Forces) -> list[str]:
    """A backup restores only onto the release (z-stream) it was taken on, when it recorded one."""
    if not recorded:
        return []
    if given is None:
        return [f"the backup was taken on release {recorded}: restore it only onto {recorded} "
                f"(pass --release {recorded} to have this checked)"]
    if given != recorded:
        msg = f"the backup was taken on release {recorded}, the target is {given}: backups restore onto the same " \
              "z-stream release only"
        if "release" not in forces:
            raise refuse("release", msg)
        return [msg + " (--force=release)"]
    return []


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int

    @property
    def label(self) -> str:
        try:
            user = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            user = str(self.uid)
        try:
            group = grp.getgrgid(self.gid).gr_name
        except KeyError:
            group = str(self.gid)
        return f"{user}:{group}"


def parse_owner(text: str) -> Owner:
    """``USER:GROUP`` (names or numbers); ``USER`` alone takes the user's primary group."""
    user, _, group = text.partition(":")
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid = pw.pw_uid, pw.pw_gid
    except KeyError:
        if not user.isdigit():
            raise UsageError(f"--owner {text}: no such user {user!r}") from None
        uid, gid = int(user), int(user)
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise UsageError(f"--owner {text}: no such group {group!r}") from None
    return Owner(uid, gid)


def default_owner(data_dir: Path) -> Owner:
    """The owner of the directory being replaced; ourselves when there is none."""
    with contextlib.suppress(OSError):
        st = data_dir.stat()
        return Owner(st.st_uid, st.st_gid)
    return Owner(os.getuid(), os.getgid())


def chown_tree(root: Path, owner: Owner) -> None:
    """Give ``root`` and everything under it to ``owner`` (only where it differs)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for n in [dirpath, *(os.path.join(dirpath, x) for x in dirnames + filenames)]:
            st = os.lstat(n)
            if (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
                os.lchown(n, owner.uid, owner.gid)


def db_locked(data_dir: Path) -> bool:
    """Whether a process holds the bbolt lock of ``data_dir`` (a running etcd does)."""
    db = data_dir / "member" / "snap" / "db"
    try:
        fd = os.open(db, os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
