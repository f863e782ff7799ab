"""Loopback helpers shared by the test modules."""

from __future__ import annotations

# Ports the OS just handed out, so parallel test sessions never share a server by accident.
from lakeserve.pipelines.embedded.ports import free_ports as free_ports
