"""The ``http`` section: where the REST server listens and who may call it.

Access control has two independent gates, both checked before a body is read:

- ``allow_cidrs``: the client address must fall in one of these networks (else 403);
- ``token_sha256``: the ``Authorization: Bearer <token>`` header must hash (SHA-256, hex) to one
  of these digests (else 401). Only digests are stored; make one with
  ``printf %s "$TOKEN" | sha256sum``.

``access_control`` is off by default on a loopback host and on for any other host
(``null``: decide by host); set it to ``true`` or ``false`` to decide yourself. Turned on
with neither tokens nor networks, it refuses to start rather than serve openly.
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="address the REST server binds")
    port: int = Field(default=8080, ge=0, le=65535, description="0: any free port")
    access_control: bool | None = Field(
        default=None, description="check tokens and networks; null: on unless the host is loopback"
    )
    token_sha256: list[str] = Field(default_factory=list, description="SHA-256 hex digests of the bearer tokens")
    allow_cidrs: list[str] = Field(default_factory=list, description="client networks allowed, e.g. 10.0.0.0/8")
    dashboard_window_s: int = Field(default=3600, ge=60, le=24 * 3600, description="span of the dashboard")

    @field_validator("token_sha256")
    @classmethod
    def _digests(cls, value: list[str]) -> list[str]:
        bad = [i for i, d in enumerate(value) if not _SHA256_HEX.match(d.lower())]
        if bad:
            raise ValueError(f"entries {bad} are not SHA-256 hex digests (64 hex characters)")
        return [d.lower() for d in value]

    @field_validator("allow_cidrs")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a network (CIDR): {exc}") from None
        return value

    @model_validator(mode="after")
    def _not_open(self) -> HttpSettings:
        if self.access_enabled and not (self.token_sha256 or self.allow_cidrs):
            raise ValueError(
                f"access control is on (host {self.host}) but neither token_sha256 nor allow_cidrs is set; "
                "configure one, or set access_control: false to serve openly"
            )
        return self

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
