"""The crash-loop breaker's bookkeeping: a death in a batch makes its records suspect (scored one
at a time), a death while scoring one record counts against it, and enough deaths quarantine it."""

from __future__ import annotations

from datetime import UTC, datetime

from lakeserve.pipelines.crash_guard import IN_FLIGHT, QUARANTINE, SUSPECT, CrashGuard, CrashLedger, spans
from lakeserve.scoring.records import Origin, ScoringRequest


def request(partition: int, offset: int) -> ScoringRequest:
    return ScoringRequest(f"{partition}-{offset}", b"{}", datetime.now(UTC), Origin("kafka", "t", partition, offset))


def test_a_death_in_a_batch_makes_suspects_and_only_a_death_alone_counts() -> None:
    ledger = CrashLedger(quarantine_after=2)
    batch = [request(0, 4), request(0, 5), request(2, 0)]  # partition 2 has one record in the batch
    orders = ledger.died(spans(batch))
    assert orders == [(SUSPECT, [("t", 0, 4, 5), ("t", 2, 0, 0)])]
    assert ledger.deaths == {}  # nobody is blamed for a batch
    assert ledger.died([("t", 0, 5, 5)]) == []  # alone: one death counted
    assert ledger.died([("t", 0, 5, 5)]) == [(QUARANTINE, [("t", 0, 5)])]
    assert ledger.standing_orders() == [(SUSPECT, [("t", 0, 4, 5), ("t", 2, 0, 0)]), (QUARANTINE, [("t", 0, 5)])]


def test_the_worker_scores_suspects_alone_and_leaves_quarantined_records_out() -> None:
    reports: list[object] = []
    guard = CrashGuard(reports.append)
    batch = [request(0, 3), request(0, 4), request(0, 5), request(1, 9)]
    assert guard.batches(batch) == [batch]
    guard.order(SUSPECT, [("t", 0, 4, 5)])
    assert guard.batches(batch) == [[batch[1]], [batch[2]], [batch[0], batch[3]]]
    guard.order(QUARANTINE, [("t", 0, 5)])
    bad, rest = guard.quarantined(batch)
    assert (bad, rest) == ([batch[2]], [batch[0], batch[1], batch[3]])
    guard.in_flight([batch[1]])
    assert reports == [(IN_FLIGHT, [("t", 0, 4, 4)])]
