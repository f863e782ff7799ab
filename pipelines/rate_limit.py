"""Per-client request rates of the REST server: one token bucket per client.

The client is the bearer token's SHA-256 digest when the request carries a token the settings know
(``http.token_sha256`` or ``http.token_rate_limits``), else the client address as resolved through
``http.trusted_proxies``. A known token's digest gets its ``token_rate_limits`` entry, anyone else
``rate_limit``; neither set: unlimited. The clock is injected; buckets of the least recently seen
clients are forgotten past ``max_clients`` (a forgotten client starts again with a full bucket).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from lakeserve.pipelines.auth import bearer_digest
from lakeserve.pipelines.http_settings import HttpSettings, RateLimit


class RateLimiter:
    """``admit(client_host, headers)``: ``None`` (go on) or the seconds to wait before a retry."""

    def __init__(
        self, settings: HttpSettings, clock: Callable[[], float] = time.monotonic, max_clients: int = 65_536
    ) -> None:
        self._default, self._per_token = settings.rate_limit, dict(settings.token_rate_limits)
        self._known = set(settings.token_sha256) | set(self._per_token)
        self._clock, self._max_clients = clock, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self._default is not None or bool(self._per_token)

    def admit(self, client_host: str | None, headers: Mapping[str, str]) -> int | None:
        if not self.enabled:
            return None
        digest = bearer_digest(headers)
        if digest is not None and digest in self._known:
            key, limit = f"token:{digest}", self._per_token.get(digest, self._default)
        else:
            key, limit = f"address:{client_host}", self._default
        return None if limit is None else self._take(key, limit)

    def _take(self, key: str, limit: RateLimit) -> int | None:
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - at) * limit.requests_per_s)
        admitted = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if admitted else tokens, now)
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return None if admitted else max(1, math.ceil((1.0 - tokens) / limit.requests_per_s))
