"""Access control of the REST server: client networks, then bearer tokens (stored hashed).

Answers carry no detail (``401``/``403`` with a fixed message) and nothing here logs a token,
its digest or the header it came in. ``client_host`` is the address uvicorn resolved: the TCP peer,
or what ``X-Forwarded-For`` says when the peer is one of ``http.trusted_proxies``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from lakeserve.pipelines.http_settings import HttpSettings

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Denied:
    status_code: int
    error_code: str
    message: str


UNAUTHENTICATED = Denied(401, "UNAUTHENTICATED", "authentication required")
FORBIDDEN = Denied(403, "PERMISSION_DENIED", "access denied")


def token_digest(token: str) -> str:
    """What ``http.token_sha256`` stores for a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_digest(headers: Mapping[str, str]) -> str | None:
    """The digest of the ``Authorization: Bearer`` token, or ``None`` when there is none."""
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token_digest(token.strip())


class AccessGuard:
    """Decides per request: ``None`` (let in) or the :class:`Denied` answer."""

    def __init__(self, settings: HttpSettings) -> None:
        self.enabled = settings.access_enabled
        self._digests = tuple(settings.token_sha256)
        self._networks: tuple[IpNetwork, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in settings.allow_cidrs
        )

    def check(self, client_host: str | None, headers: Mapping[str, str]) -> Denied | None:
        if not self.enabled:
            return None
        if self._networks and not self._address_allowed(client_host):
            return FORBIDDEN
        if self._digests and not self._token_valid(headers):
            return UNAUTHENTICATED
        return None

    def _address_allowed(self, host: str | None) -> bool:
        if host is None:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self._networks)

    def _token_valid(self, headers: Mapping[str, str]) -> bool:
        digest = bearer_digest(headers)
        if digest is None:
            return False
        found = False
        for known in self._digests:  # every digest compared: timing says nothing about which
            found |= hmac.compare_digest(digest, known)
        return found
