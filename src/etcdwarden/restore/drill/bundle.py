"""Does the resources bundle open and hold what the manifest lists? The drill's check of the bundle.

The bundle (``static_kuberesources_<ts>.tar.gz[.age]``) is read to its end, every member's bytes
included (so the gzip stream and its CRC are proven, not just the index), without extracting anything.
It must hold as many entries as the manifest recorded (``resources.files``) and an entry for every path
the manifest lists (``resources.paths``: the files and directories given at backup time, stored under
their absolute path without the leading ``/``). When the manifest records encryption-at-rest key names,
the bundle must hold an EncryptionConfiguration naming every one of them: the configurations found are
returned, for the drill's decoding of encrypted values (:mod:`.keys`).

An encrypted bundle (``.age``) is decrypted into ``work`` (the drill's private directory) first.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.encryption.errors import EncryptionConfigError
from etcdwarden.errors import EtcdwardenError
from etcdwarden.format.manifest import Manifest
from etcdwarden.snapshot.source import detect_format

_CONFIG_MAX = 1 << 20
_CONFIG_MARKS = (b"EncryptionConfiguration", b"EncryptionConfig")
_CHUNK = 1 << 20


@dataclass
class BundleCheck:
    ok: bool
    detail: str
    entries: int = 0
    configs: list[EncryptionConfiguration] = field(default_factory=list)


def _present(norm: str, names: set[str]) -> bool:
    """Whether a listed path is in the bundle: itself, or entries below it. A relative path was stored under
    the absolute path it resolved to, so it is found as a suffix."""
    if norm in names:
        return True
    tail = "/" + norm
    return any(n.startswith(norm + "/") or n.endswith(tail) or (tail + "/") in ("/" + n) for n in names)


def _decrypt(bundle: Path, identity: Path | None, work: Path) -> Path:
    import pyrage

    if identity is None:
        raise EtcdwardenError(f"{bundle.name} is age-encrypted: the age identity is needed to open it")
    try:
        keys = [pyrage.x25519.Identity.from_str(line.strip()) for line in identity.read_text().splitlines()
                if line.strip().startswith("AGE-SECRET-KEY-")]
    except Exception as e:  # pyrage raises its own errors for a malformed identity
        raise EtcdwardenError(f"{identity}: not a usable age identity file ({type(e).__name__})") from None
    plain = work / "resources.tar.gz"
    fd = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as dst, open(bundle, "rb") as src:
        try:
            pyrage.decrypt_io(src, dst, keys)
        except pyrage.DecryptError as e:
            raise EtcdwardenError(f"{bundle.name}: cannot decrypt with {identity}: {e}") from None
    return plain


def check_bundle(m: Manifest, bundle: Path | None, identity: Path | None, work: Path) -> BundleCheck:
    """Open the bundle of ``m`` at ``bundle`` (``None``: not found) and compare it with the manifest."""
    res = m.resources
    if res is None:
        if m.key_names:
            return BundleCheck(False, "the manifest records encryption-at-rest keys "
                                      f"({', '.join(m.key_names)}) but the backup has no resources bundle to hold them")
        return BundleCheck(True, "the backup has no resources bundle")
    if bundle is None:
        return BundleCheck(False, f"{res.file} is listed in the manifest but was not found")
    try:
        path = _decrypt(bundle, identity, work) if detect_format(bundle) == "age" else bundle
        names, configs, problems = _read(path)
    except (OSError, tarfile.TarError, EOFError, EtcdwardenError) as e:
        return BundleCheck(False, f"{res.file} does not open: {e}")
    entries = len(names)
    if res.files is not None and entries != res.files:
        problems.append(f"{entries} entries, the manifest records {res.files}")
    missing = [p for p in res.paths if not _present(os.path.normpath(p).lstrip("/"), names)]
    if missing:
        problems.append(f"lacks {', '.join(missing)}, listed in the manifest")
    wanted = set(m.key_names)
    if wanted:
        held = set().union(*(c.key_names() for c in configs)) if configs else set()
        if not configs:
            problems.append("holds no EncryptionConfiguration, but the manifest records the keys "
                            + ", ".join(sorted(wanted)))
        elif wanted - held:
            problems.append(f"its EncryptionConfiguration lacks the key(s) {', '.join(sorted(wanted - held))} the "
                            "manifest records")
    if problems:
        return BundleCheck(False, f"{res.file}: " + "; ".join(problems), entries, configs)
    found = f"; {len(configs)} EncryptionConfiguration(s)" if configs else ""
    return BundleCheck(True, f"{res.file}: {entries} entries, every listed path present{found}", entries, configs)


def _read(path: Path) -> tuple[set[str], list[EncryptionConfiguration], list[str]]:
    names: set[str] = set()
    configs: list[EncryptionConfiguration] = []
    problems: list[str] = []
    with tarfile.open(path, mode="r:gz") as tar:
        for member in tar:
            names.add(member.name.rstrip("/"))
            if not member.isfile():
                continue
            f = tar.extractfile(member)
            if f is None:
                continue
            head = b""
            while chunk := f.read(_CHUNK):  # to the end: the gzip stream and its CRC are proven
                if len(head) <= _CONFIG_MAX:
                    head += chunk
            if member.size <= _CONFIG_MAX and any(mark in head for mark in _CONFIG_MARKS):
                try:
                    configs.append(EncryptionConfiguration.parse(head, member.name))
                except EncryptionConfigError as e:
                    problems.append(f"{member.name} looks like an EncryptionConfiguration but does not load ({e})")
    return names, configs, problems
