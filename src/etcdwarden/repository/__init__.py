"""Where backups live: one small interface (:mod:`.base`), one module per backend (:mod:`.local`,
:mod:`.objectstore`), the catalog of manifests (:mod:`.catalog`), copying (:mod:`.transfer`), the
glue ``etcdwarden backup`` uses to write into a repository (:mod:`.target`) and the retention policies
(:mod:`.retention`)."""

from etcdwarden.repository.base import (
    REGISTRY,
    ObjectInfo,
    ObjectNotFound,
    Repository,
    RepositoryError,
    RepositoryOptions,
    Writer,
    open_repository,
)

__all__ = ["REGISTRY", "ObjectInfo", "ObjectNotFound", "Repository", "RepositoryError", "RepositoryOptions",
           "Writer", "open_repository"]
