"""Local etcd processes on loopback: the embedded cluster used by ``demo`` and the tests."""
