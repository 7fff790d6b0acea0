"""etcdwarden: the operational lifecycle of an etcd cluster, done safely."""

__version__ = "0.1.0"
