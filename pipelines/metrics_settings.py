"""The ``metrics`` section: where ``lakeserve serve`` exposes ``/metrics``, ``/health`` and ``/ready``
for its Kafka workers (:mod:`lakeserve.pipelines.metrics_server`).

On by default, on loopback: a Prometheus server or a scaler on the same host (a sidecar) can
scrape it at once. Bind ``0.0.0.0`` (or a pod address) for a scraper elsewhere; the endpoint has
no access control and carries no request data, only counts, so keep it on a private network.
``port: 0`` or ``null`` turns it off.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

_HOST = re.compile(r"^[A-Za-z0-9._:\-\[\]]+$")  # a name, an IPv4 or an IPv6 address


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="address the supervisor's metrics endpoint binds")
    port: int | None = Field(default=9464, ge=0, le=65535, description="0 or null: no metrics endpoint")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _HOST.match(value):
            raise ValueError(f"{value!r} is not a host name or an IP address")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.port)
