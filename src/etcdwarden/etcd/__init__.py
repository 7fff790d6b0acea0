"""The only place that speaks gRPC to etcd: generated stubs (``api/``) and a small async client."""
