"""The ``http`` section: where the REST server listens, who may call it, and how much work it takes.

Access control has two independent gates, both checked before a body is read:

- ``allow_cidrs``: the client address must fall in one of these networks (else 403);
- ``token_sha256``: the ``Authorization: Bearer <token>`` header must hash (SHA-256, hex) to one
  of these digests (else 401). Only digests are stored; make one with
  ``printf %s "$TOKEN" | sha256sum``.

``access_control`` is off by default on a loopback host and on for any other host
(``null``: decide by host); set it to ``true`` or ``false`` to decide yourself. Turned on
with neither tokens nor networks, it refuses to start rather than serve openly.

The client address is the TCP peer's, unless the peer is in ``trusted_proxies``: only then is
``X-Forwarded-For`` read (the right-most address that is not itself a trusted proxy). Empty by
default: no forwarding header is believed, not even from loopback.

TLS: ``ssl_certfile`` and ``ssl_keyfile`` (PEM, both or neither). A host that is not loopback
refuses to start without them unless ``plaintext_public: true`` says a TLS-terminating proxy is
in front.

Bounded work: at most ``max_queued`` requests wait for the scorer (more are answered 503 with
``Retry-After``); ``rate_limit`` is a token bucket per client (the bearer token's digest when one
is given, else the client address), ``token_rate_limits`` one per token digest (429 with
``Retry-After`` past it).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class RateLimit(BaseModel):
    """A token bucket: ``burst`` requests at once, refilled at ``requests_per_s``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_s: float = Field(gt=0, description="sustained requests per second")
    burst: int = Field(ge=1, description="requests allowed at once (bucket size)")


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="address the REST server binds")
    port: int = Field(default=8080, ge=0, le=65535, description="0: any free port")
    access_control: bool | None = Field(
        default=None, description="check tokens and networks; null: on unless the host is loopback"
    )
    token_sha256: list[str] = Field(default_factory=list, description="SHA-256 hex digests of the bearer tokens")
    allow_cidrs: list[str] = Field(default_factory=list, description="client networks allowed, e.g. 10.0.0.0/8")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="peers (CIDRs) whose X-Forwarded-For is believed; empty: none"
    )
    ssl_certfile: Path | None = Field(default=None, description="PEM certificate (chain) to serve TLS")
    ssl_keyfile: Path | None = Field(default=None, description="PEM private key of ssl_certfile")
    plaintext_public: bool = Field(
        default=False, description="allow plain HTTP on a non-loopback host (a TLS proxy is in front)"
    )
    max_queued: int = Field(default=1024, ge=1, description="requests waiting for the scorer; more: 503")
    rate_limit: RateLimit | None = Field(default=None, description="per client; null: unlimited")
    token_rate_limits: dict[str, RateLimit] = Field(
        default_factory=dict, description="per bearer token, keyed by its SHA-256 hex digest"
    )
    dashboard_window_s: int = Field(default=3600, ge=60, le=24 * 3600, description="span of the dashboard")

    @field_validator("token_sha256")
    @classmethod
    def _digests(cls, value: list[str]) -> list[str]:
        bad = [i for i, d in enumerate(value) if not _SHA256_HEX.match(d.lower())]
        if bad:
            raise ValueError(f"entries {bad} are not SHA-256 hex digests (64 hex characters)")
        return [d.lower() for d in value]

    @field_validator("token_rate_limits")
    @classmethod
    def _limit_digests(cls, value: dict[str, RateLimit]) -> dict[str, RateLimit]:
        bad = sorted(k for k in value if not _SHA256_HEX.match(k.lower()))
        if bad:
            raise ValueError(f"keys {bad} are not SHA-256 hex digests (64 hex characters)")
        return {k.lower(): v for k, v in value.items()}

    @field_validator("allow_cidrs", "trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        networks = []
        for cidr in value:
            try:
                networks.append(str(ipaddress.ip_network(cidr, strict=False)))
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a network (CIDR): {exc}") from None
        return networks

    @model_validator(mode="after")
    def _not_open(self) -> HttpSettings:
        if self.access_enabled and not (self.token_sha256 or self.allow_cidrs):
            raise ValueError(
                f"access control is on (host {self.host}) but neither token_sha256 nor allow_cidrs is set; "
                "configure one, or set access_control: false to serve openly"
            )
        return self

    @model_validator(mode="after")
    def _tls(self) -> HttpSettings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("http.ssl_certfile and http.ssl_keyfile go together: set both or neither")
        for name, path in (("ssl_certfile", self.ssl_certfile), ("ssl_keyfile", self.ssl_keyfile)):
            if path is not None and not path.is_file():
                raise ValueError(f"http.{name}: no such file {path}")
        if not self.tls and not self.plaintext_public and not is_loopback(self.host):
            raise ValueError(
                f"http.host {self.host} is not loopback and http.ssl_certfile is not set: refusing to serve "
                "plain HTTP publicly; set http.ssl_certfile and http.ssl_keyfile, or http.plaintext_public: true "
                "when a TLS-terminating proxy is in front"
            )
        return self

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None

    @property
    def access_enabled(self) -> bool:
        if self.access_control is not None:
            return self.access_control
        return not is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
