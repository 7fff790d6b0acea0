"""Where backups live: one small interface (:mod:`.base`), URL schemes (:mod:`.location`), one module per
backend (:mod:`.local`, :mod:`.objectstore`), the catalog of manifests (:mod:`.catalog`), copying
(:mod:`.transfer`), the glue ``etcdwarden backup`` uses to write into a repository (:mod:`.target`) and the
retention policies (:mod:`.retention`)."""

# Nothing is imported here: `import etcdwarden.repository.location` must stay cheap (see that module).
