"""No crash loop: a record whose scoring kills its worker is found and quarantined.

A model can take its process down in ways no ``except`` catches (a segfault in native code, an
out-of-memory kill). The record is then replayed to the next owner, which dies the same way:
a crash loop in which the partition is never read past that record. The supervisor breaks it:

1. Before scoring a micro-batch, a worker reports the offsets it is about to score (per
   partition, first to last) through its report pipe; after answering it reports "done".
2. When a worker dies with a batch in flight, the supervisor marks those offsets **suspect**
   and tells every worker: suspect records are scored one at a time, each reported first.
3. A death while scoring one record counts against that record. After
   ``kafka.quarantine_after_deaths`` deaths the supervisor tells every worker to **quarantine**
   it: the record is answered 500 ``QUARANTINED`` without being scored, dead-lettered and
   logged, and the stream goes on.

The bookkeeping lives in the supervisor's memory (one host); :class:`CrashGuard` is the
worker's side, fed by the supervisor's orders, and :class:`CrashLedger` the supervisor's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from lakeserve.errors import ScoringError
from lakeserve.scoring.records import ScoringRequest

log = logging.getLogger(__name__)

Position = tuple[str, int, int]  # topic, partition, offset
Span = tuple[str, int, int, int]  # topic, partition, first offset, last offset
IN_FLIGHT, DONE, SUSPECT, QUARANTINE = "in-flight", "done", "suspect", "quarantine"


class Quarantined(ScoringError):
    """The record killed its worker too many times; it is not scored again."""

    status_code = 500
    error_code = "QUARANTINED"


def position_of(request: ScoringRequest) -> Position | None:
    o = request.origin
    if o.topic is None or o.partition is None or o.offset is None:
        return None
    return o.topic, o.partition, o.offset


def spans(requests: Iterable[ScoringRequest]) -> list[Span]:
    """The offsets of ``requests`` per partition, as (topic, partition, first, last)."""
    bounds: dict[tuple[str, int], tuple[int, int]] = {}
    for r in requests:
        p = position_of(r)
        if p is None:
            continue
        first, last = bounds.get(p[:2], (p[2], p[2]))
        bounds[p[:2]] = (min(first, p[2]), max(last, p[2]))
    return [(t, n, first, last) for (t, n), (first, last) in sorted(bounds.items())]


class CrashGuard:
    """The worker's side: which records to score alone, which not at all, and the reports."""

    def __init__(self, report: Callable[[object], None] = lambda _: None) -> None:
        self._report = report
        self._suspect: list[Span] = []
        self._quarantined: set[Position] = set()
        self._lock = threading.Lock()

    def order(self, kind: str, items: Sequence[tuple[str, int, int] | tuple[str, int, int, int]]) -> None:
        """An order from the supervisor: more suspect spans, or quarantined positions."""
        with self._lock:
            if kind == SUSPECT:
                self._suspect += [s for s in items if len(s) == 4]
            elif kind == QUARANTINE:
                self._quarantined |= {q for q in items if len(q) == 3}

    def quarantined(self, requests: Sequence[ScoringRequest]) -> tuple[list[ScoringRequest], list[ScoringRequest]]:
        """``requests`` split into (quarantined, the others)."""
        with self._lock:
            if not self._quarantined:
                return [], list(requests)
            bad = [r for r in requests if position_of(r) in self._quarantined]
        return bad, [r for r in requests if r not in bad]

    def batches(self, requests: list[ScoringRequest]) -> list[list[ScoringRequest]]:
        """Suspect records one per batch, first; the others together."""
        with self._lock:
            if not self._suspect:
                return [requests]
            suspect = [r for r in requests if self._is_suspect(position_of(r))]
        rest = [r for r in requests if r not in suspect]
        return [[r] for r in suspect] + ([rest] if rest else [])

    def in_flight(self, batch: Sequence[ScoringRequest]) -> None:
        self._report((IN_FLIGHT, spans(batch)))

    def done(self) -> None:
        self._report((DONE,))

    def _is_suspect(self, position: Position | None) -> bool:
        if position is None:
            return False
        topic, partition, offset = position
        return any(t == topic and n == partition and first <= offset <= last for t, n, first, last in self._suspect)


@dataclass
class CrashLedger:
    """The supervisor's side: deaths per span and per record, and the orders they lead to."""

    quarantine_after: int
    deaths: dict[Position, int] = field(default_factory=dict)
    suspects: list[Span] = field(default_factory=list)
    quarantined: set[Position] = field(default_factory=set)

    def died(self, in_flight: Sequence[Span]) -> list[tuple[str, list[object]]]:
        """A worker died while scoring ``in_flight``; the orders to send to every worker."""
        orders: list[tuple[str, list[object]]] = []
        new_suspects = [s for s in in_flight if not self._covered(s)]
        if new_suspects:
            self.suspects += new_suspects
            orders.append((SUSPECT, list(new_suspects)))
        alone = len(in_flight) == 1 and in_flight[0][2] == in_flight[0][3]
        if not alone:
            return orders  # a batch: its records are scored one at a time from now on, then counted
        for topic, partition, first, _last in in_flight:
            position = (topic, partition, first)
            self.deaths[position] = self.deaths.get(position, 0) + 1
            if self.deaths[position] >= self.quarantine_after and position not in self.quarantined:
                self.quarantined.add(position)
                log.error("%s/%d@%d killed %d workers: quarantined", topic, partition, first, self.deaths[position])
                orders.append((QUARANTINE, [position]))
        return orders

    def _covered(self, span: Span) -> bool:
        topic, partition, first, last = span
        return any(t == topic and n == partition and a <= first and last <= b for t, n, a, b in self.suspects)

    def standing_orders(self) -> list[tuple[str, list[object]]]:
        """What a newly started worker must be told."""
        orders: list[tuple[str, list[object]]] = []
        if self.suspects:
            orders.append((SUSPECT, list(self.suspects)))
        if self.quarantined:
            orders.append((QUARANTINE, list(sorted(self.quarantined))))
        return orders
