"""Loopback helpers shared by the test modules."""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """Ports the OS just handed out, so parallel test sessions never share a server by accident."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
