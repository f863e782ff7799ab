"""Where answers go: the responses topic, and the dead-letter topic for requests that failed.

An answer is keyed like its request and carries headers ``request-id``, ``client-request-id``,
``served-model-name`` and ``status``. A request answered with an error status also goes to the
dead-letter topic with its original bytes and headers naming the reason and its position.
``flush()`` returns only when the broker has acknowledged everything sent (``acks=all``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from lakeserve.errors import ComponentError
from lakeserve.pipelines.kafka_settings import KafkaSettings
from lakeserve.scoring.records import RequestResult


class ResponseSink(Protocol):
    """Delivers answers; at-least-once once ``flush`` has returned."""

    def send(self, results: Sequence[RequestResult]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def answer_headers(result: RequestResult) -> list[tuple[str, bytes]]:
    headers = [("request-id", result.request.request_id), ("status", str(result.status_code))]
    if result.client_request_id:
        headers.append(("client-request-id", result.client_request_id))
    if result.served_model_name:
        headers.append(("served-model-name", result.served_model_name))
    return [(k, v.encode()) for k, v in headers]


def dead_letter_headers(result: RequestResult) -> list[tuple[str, bytes]]:
    origin = result.request.origin
    headers = [
        ("request-id", result.request.request_id),
        ("status", str(result.status_code)),
        ("error-code", result.error_code or ""),
        ("error-message", (result.message or "")[:4000]),
        ("source-topic", origin.topic or ""),
        ("source-partition", "" if origin.partition is None else str(origin.partition)),
        ("source-offset", "" if origin.offset is None else str(origin.offset)),
    ]
    return [(k, v.encode("utf-8", "replace")) for k, v in headers]


class KafkaResponseSink:
    """``ResponseSink`` producing to ``kafka.responses_topic`` and ``kafka.dead_letter_topic``."""

    def __init__(self, kafka: KafkaSettings, max_request_bytes: int) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.kafka = kafka
        try:
            self.producer = KafkaProducer(
                **kafka.client_options(),
                acks="all",
                linger_ms=2,
                retries=5,
                max_request_size=max_request_bytes + 1024 * 1024,
                client_id=f"lakeserve-{kafka.group_id}",
            )
        except KafkaError as exc:
            raise ComponentError("kafka", f"cannot create the answer producer: {exc}") from exc
        self._pending: list[Any] = []

    def send(self, results: Sequence[RequestResult]) -> None:
        for r in results:
            key = r.request.origin.key
            self._pending.append(
                self.producer.send(
                    self.kafka.responses_topic, value=r.response_body, key=key, headers=answer_headers(r)
                )
            )
            if not r.ok:
                self._pending.append(
                    self.producer.send(
                        self.kafka.dead_letter_topic, value=r.request.body, key=key, headers=dead_letter_headers(r)
                    )
                )

    def flush(self) -> None:
        """Block until every answer and dead letter is acknowledged; raise if any failed."""
        from kafka.errors import KafkaError

        pending, self._pending = self._pending, []
        try:
            self.producer.flush()
            for future in pending:
                future.get(timeout=30)
        except KafkaError as exc:
            raise ComponentError("kafka", f"answers were not acknowledged: {exc}") from exc

    def close(self) -> None:
        self.producer.close()
