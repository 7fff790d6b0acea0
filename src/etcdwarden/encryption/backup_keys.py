"""Which encryption-at-rest keys the kept backups still need (encryption.md §3.1, invariant 2).

A backup's manifest records the key names of the EncryptionConfiguration in force when it was taken
(``encryption_at_rest.key_names``). Restoring it brings back values written with those keys, so a
key may only leave the configuration once no *kept* (complete, verified) backup lists it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from etcdwarden.errors import EtcdwardenError, UsageError

if TYPE_CHECKING:
    from etcdwarden.repository.base import RepositoryOptions


@dataclass(frozen=True)
class BackupSource:
    """A repository (URL or path) whose backups are consulted, with the options to reach it."""

    location: str
    options: RepositoryOptions | None = None


def keys_needed_by_backups(sources: Sequence[BackupSource]) -> dict[str, list[str]]:
    """Key name → the kept backups (``"<repository> <backup id>"``) whose manifests list it.

    Blocking (lists the repositories and reads every manifest): run it in a thread from async code.
    A repository that cannot be read, or holds no backups at all, raises: nothing is pruned on partial
    knowledge.
    """
    from etcdwarden.repository.base import RepositoryError, open_repository
    from etcdwarden.repository.catalog import load_catalog

    needed: dict[str, list[str]] = {}
    for src in sources:
        try:
            with open_repository(src.location, src.options) as repo:
                catalog = load_catalog(repo)
                url = repo.url
        except RepositoryError as e:
            raise EtcdwardenError(f"cannot read the backups in {src.location}: {e}") from None
        if not catalog.entries:  # most likely a wrong location: pruning on it would forget real backups
            raise UsageError(f"{src.location} holds no backups; check the repository location (nothing is pruned "
                             "on a repository that cannot be told apart from a typo)")
        unreadable = [e.id for e in catalog.entries if e.state == "unreadable"]
        if unreadable:  # its manifest cannot tell which keys it needs: prune nothing
            raise EtcdwardenError(f"{src.location}: the manifest of backup(s) {', '.join(unreadable)} cannot be read, "
                                  "so the keys they need are unknown; nothing is pruned (retry, or fix or remove "
                                  "those backups)")
        for entry in catalog.good:
            for name in entry.key_names:
                needed.setdefault(name, []).append(f"{url} {entry.id}")
    return needed
