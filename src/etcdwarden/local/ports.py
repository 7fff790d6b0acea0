"""Free TCP ports on 127.0.0.1 (for the tests; defined in :mod:`etcdwarden.processes`)."""

from __future__ import annotations

from etcdwarden.processes import free_port, free_ports

__all__ = ["free_port", "free_ports"]
