"""Whether this process could listen on a TCP port, asked before a server binds it.

Servers report a taken port poorly (gRPC: "Failed to bind", in a traceback), so the storage proxy and
the local dev stack ask first and say which port is taken and how to fix it.
"""

from __future__ import annotations

import socket

__all__ = ["bind_error"]


def bind_error(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on now ("Address already in use", say); None if it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As servers bind: connections of a previous run in TIME_WAIT do not block a restart.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.strerror or str(error)
    return None
