"""Demo traffic: send scoring requests to the requests topic and read their answers back.

Used by the main job to drive the service the way any Kafka client would. Only answers to the
requests sent by this call are read (the consumer starts at the topics' end offsets), so a second
run of the demo counts only its own traffic.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lakeserve.errors import ComponentError
from lakeserve.pipelines.kafka_settings import KafkaSettings

Progress = Callable[[int, int], None]  # (answered, total)


@dataclass
class TrafficReport:
    sent: int = 0
    answered: int = 0
    duplicates: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_entity: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    latency_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latency_ms, q)) if self.latency_ms else float("nan")


class Traffic:
    """Opens end-of-topic readers first, then sends, then collects (so nothing is missed)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.answers = _tail_reader(kafka, kafka.responses_topic)
        self.letters = _tail_reader(kafka, kafka.dead_letter_topic)

    def run(
        self, bodies: list[bytes], run_id: str, timeout_s: float = 300, on_answer: Progress = lambda done, total: None
    ) -> TrafficReport:
        """Send every body, read every answer (``on_answer(answered, total)`` as they come)."""
        report = TrafficReport(sent=len(bodies))
        start = time.monotonic()
        sent_ms = self._send(bodies, run_id)
        self._collect(report, sent_ms, timeout_s, on_answer)
        report.dead_letters = self._count_letters(run_id, expected=report.sent - report.by_status["200"])
        report.seconds = time.monotonic() - start
        return report

    def close(self) -> None:
        self.answers.close()
        self.letters.close()

    def _send(self, bodies: list[bytes], run_id: str) -> dict[bytes, int]:
        from kafka import KafkaProducer

        producer = KafkaProducer(**self.kafka.client_options(), linger_ms=5, acks="all")
        futures = {}
        for i, body in enumerate(bodies):
            key = f"{run_id}-{i}".encode()
            futures[key] = producer.send(self.kafka.requests_topic, value=body, key=key)
        producer.flush()
        sent = {key: int(f.get(timeout=30).timestamp) for key, f in futures.items()}
        producer.close()
        return sent

    def _collect(self, report: TrafficReport, sent_ms: dict[bytes, int], timeout_s: float, on_answer: Progress) -> None:
        seen: set[bytes] = set()
        deadline = time.monotonic() + timeout_s
        while len(seen) < len(sent_ms):
            if time.monotonic() > deadline:
                raise ComponentError("kafka", f"only {len(seen)} of {len(sent_ms)} demo requests answered in "
                                              f"{timeout_s:.0f} s; is `lakeserve serve` running?")
            for records in self.answers.poll(timeout_ms=200).values():
                for r in records:
                    if r.key not in sent_ms:
                        continue
                    if r.key in seen:
                        report.duplicates += 1
                        continue
                    seen.add(r.key)
                    headers = {k: v.decode() for k, v in r.headers or []}
                    report.by_status[headers.get("status", "?")] += 1
                    for entity in filter(None, headers.get("served-model-name", "").split(",")):
                        report.by_entity[entity] += 1
                    report.latency_ms.append(float(r.timestamp - sent_ms[r.key]))
            on_answer(len(seen), len(sent_ms))
        report.answered = len(seen)

    def _count_letters(self, run_id: str, expected: int) -> int:
        prefix, found = f"{run_id}-".encode(), set[bytes]()
        deadline = time.monotonic() + 30
        while len(found) < expected and time.monotonic() < deadline:
            for records in self.letters.poll(timeout_ms=200).values():
                found.update(r.key for r in records if r.key and r.key.startswith(prefix))
        return len(found)


def _tail_reader(kafka: KafkaSettings, topic: str) -> Any:
    """A consumer outside any group, positioned at the current end of every partition."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(parts)
    consumer.seek_to_end(*parts)
    for tp in parts:
        consumer.position(tp)  # resolve the end offsets now, before anything is sent
    return consumer
