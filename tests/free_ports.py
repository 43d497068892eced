"""Ports for a storage proxy in a test: the proxy listens on a port and, for its suggest service, the next."""

from __future__ import annotations

from kubetune.devstack.process import HOST, free_port
from kubetune.ports import bind_error
from kubetune.suggest_client import suggest_port


def free_port_and_next() -> int:
    """A free port whose next port (the suggest service's) is free too: free_port alone says nothing of it."""
    while True:
        port = free_port()
        if bind_error(HOST, suggest_port(port)) is None:
            return port
