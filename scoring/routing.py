"""Traffic split: which served entity answers a record, sticky per entity key.

A record's key string is hashed with BLAKE2b (not Python's per-process salted ``hash``) into
one of 100 buckets; the routes own consecutive bucket ranges in their configured order
(80/20 → buckets 0-79 and 80-99). The assignment is a pure function of the key and the
config, so the Kafka workers, the HTTP server and the Spark batch job all route a customer to
the same entity, in any process. Shifting 80/20 to 50/50 moves only the keys of buckets 50-79.

A record without a key routes by its request id (all records of that request go together).
The shadow entity (``traffic_config.shadow_model_name``) scores a copy of every record that it
does not already answer; those copies are logged, never answered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from lakeserve.features.lookup import normalize_key
from lakeserve.scoring.settings import TrafficConfig

BUCKETS = 100


def bucket(key: str) -> int:
    """The bucket (0-99) of a key string; stable across processes, machines and versions (and
    defined for any string: parsing refuses lone surrogates, but a transport might not parse)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def key_string(value: Any) -> str | None:
    """The routing key of a field value: ``42``, ``42.0`` and ``np.int64(42)`` all give ``"42"``."""
    normalized = normalize_key(value)
    return None if normalized is None else str(normalized)


class Router:
    """Assigns served entities to record keys by the integer traffic percentages."""

    def __init__(self, traffic_config: TrafficConfig) -> None:
        table: list[str] = []
        for route in traffic_config.routes:
            table += [route.served_model_name] * route.traffic_percentage
        self._table = tuple(table)  # bucket -> served entity name, 100 entries
        self._shadow = traffic_config.shadow_model_name

    @property
    def shadow(self) -> str | None:
        """The served entity that scores an unanswered copy of every record, if any."""
        return self._shadow

    def route(self, key: str) -> str:
        return self._table[bucket(key)]

    def assign(self, keys: Sequence[str]) -> list[str]:
        """The served entity answering each key, in order."""
        return [self._table[bucket(k)] for k in keys]

    def shadows(self, assigned: Sequence[str]) -> list[bool]:
        """Whether each record, answered by ``assigned``, also gets a shadow copy."""
        return [self._shadow is not None and a != self._shadow for a in assigned]
