"""An in-process rolling window of request outcomes per served entity, for the dashboard.

Time is cut into steps (10 s by default) kept for the window (an hour by default); each step
holds, per served entity, a count, an error count and a log-scale latency histogram (buckets
25 % apart, 0.25 ms to about 5 min), so memory is bounded whatever the traffic and the
percentiles are exact to one bucket. The clock is injected (monotonic seconds).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BOUNDS_MS: tuple[float, ...] = tuple(0.25 * 1.25**i for i in range(64))
RECENT_S = 60.0  # QPS and traffic split are over the last minute


@dataclass(slots=True)
class _Cell:
    count: int = 0
    errors: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS_MS) + 1))

    def merge(self, other: _Cell) -> None:
        self.count += other.count
        self.errors += other.errors
        self.histogram = [a + b for a, b in zip(self.histogram, other.histogram, strict=True)]


class RollingWindow:
    """Thread-safe: the HTTP event loop and the Kafka loop add, the dashboard reads."""

    def __init__(self, window_s: float = 3600.0, step_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.window_s, self.step_s, self._clock = window_s, step_s, clock
        self._steps: dict[int, dict[str, _Cell]] = {}
        self._lock = threading.Lock()

    def add(self, entity: str, latency_ms: float, ok: bool) -> None:
        step = int(self._clock() // self.step_s)
        with self._lock:
            cell = self._steps.setdefault(step, {}).setdefault(entity, _Cell())
            cell.count += 1
            cell.errors += not ok
            cell.histogram[bisect.bisect_left(BOUNDS_MS, latency_ms)] += 1
            self._prune(step)

    def snapshot(self) -> dict[str, Any]:
        """Per entity over the window: requests, QPS (last minute), p50/p95/p99, error rate, share."""
        now_step = int(self._clock() // self.step_s)
        recent_steps = max(1, round(RECENT_S / self.step_s))
        with self._lock:
            self._prune(now_step)
            steps = {k: dict(v) for k, v in self._steps.items()}
        entities = sorted({e for cells in steps.values() for e in cells})
        recent = {e: _recent_count(steps, e, now_step, recent_steps) for e in entities}
        recent_total = sum(recent.values())
        return {
            "window_s": self.window_s,
            "step_s": self.step_s,
            "entities": [
                _entity_view(e, steps, recent[e], recent_total, recent_steps * self.step_s) for e in entities
            ],
            "series": {e: self._series(steps, e, now_step) for e in entities},
        }

    def _series(self, steps: dict[int, dict[str, _Cell]], entity: str, now_step: int) -> list[float]:
        """QPS per step over the window, oldest first."""
        n = int(self.window_s // self.step_s)
        counts = (steps.get(s, {}).get(entity, _Cell()).count for s in range(now_step - n + 1, now_step + 1))
        return [round(c / self.step_s, 3) for c in counts]

    def _prune(self, now_step: int) -> None:
        oldest = now_step - int(self.window_s // self.step_s) + 1
        for step in [s for s in self._steps if s < oldest]:
            del self._steps[step]


def _recent_count(steps: dict[int, dict[str, _Cell]], entity: str, now_step: int, n: int) -> int:
    return sum(steps.get(s, {}).get(entity, _Cell()).count for s in range(now_step - n + 1, now_step + 1))


def _entity_view(
    entity: str, steps: dict[int, dict[str, _Cell]], recent: int, recent_total: int, recent_s: float
) -> dict[str, Any]:
    total = _Cell()
    for cells in steps.values():
        if entity in cells:
            total.merge(cells[entity])
    return {
        "served_entity": entity,
        "requests": total.count,
        "errors": total.errors,
        "error_rate": round(total.errors / total.count, 4) if total.count else 0.0,
        "qps": round(recent / recent_s, 3),
        "traffic_share": round(recent / recent_total, 4) if recent_total else 0.0,
        "p50_ms": percentile(total.histogram, 0.50),
        "p95_ms": percentile(total.histogram, 0.95),
        "p99_ms": percentile(total.histogram, 0.99),
    }


def percentile(histogram: list[int], q: float) -> float | None:
    """The upper bound (ms) of the bucket holding the q-quantile; None without samples."""
    total = sum(histogram)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(histogram):
        seen += n
        if seen >= rank and n:
            return round(BOUNDS_MS[min(i, len(BOUNDS_MS) - 1)], 3)
    return round(BOUNDS_MS[-1], 3)
