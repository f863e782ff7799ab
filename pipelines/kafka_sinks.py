"""Where answers go: the responses topic, and the dead-letter topic for requests that failed.

An answer is keyed like its request and carries headers ``request-id``, ``client-request-id``,
``served-model-name`` and ``status``, plus the request's headers named in
``kafka.passthrough_headers`` (``traceparent``, ``tracestate`` and ``correlation-id`` by default;
exact names, values as UTF-8 text). A request answered with an error status also goes to the
dead-letter topic with its original bytes, headers naming the reason and its position, and the
same passed-through headers.
:meth:`ResponseSink.deliver` returns once the broker has acknowledged everything sent
(``acks=all``) and says what it did not acknowledge: the delivery loop sends those again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lakeserve.errors import ComponentError, ResponseTooLarge
from lakeserve.pipelines.kafka_errors import check_login
from lakeserve.pipelines.kafka_settings import KafkaSettings
from lakeserve.scoring.records import RequestResult

log = logging.getLogger(__name__)


def answer_headers(result: RequestResult, passthrough: Sequence[str] = ()) -> list[tuple[str, bytes]]:
    headers = [("request-id", result.request.request_id), ("status", str(result.status_code))]
    if result.client_request_id:
        headers.append(("client-request-id", result.client_request_id))
    if result.served_model_name:
        headers.append(("served-model-name", result.served_model_name))
    headers += passed_through(result, passthrough)
    return [(k, v.encode("utf-8", "replace")) for k, v in headers]


def passed_through(result: RequestResult, names: Sequence[str]) -> list[tuple[str, str]]:
    """The request's headers named in ``kafka.passthrough_headers`` (exact names), in that order."""
    request = result.request.headers
    return [(name, request[name]) for name in names if name in request]


def dead_letter_headers(result: RequestResult, passthrough: Sequence[str] = ()) -> list[tuple[str, bytes]]:
    origin = result.request.origin
    headers = [
        ("request-id", result.request.request_id),
        ("status", str(result.status_code)),
        ("error-code", result.error_code or ""),
        ("error-message", (result.message or "")[:4000]),
        ("source-topic", origin.topic or ""),
        ("source-partition", "" if origin.partition is None else str(origin.partition)),
        ("source-offset", "" if origin.offset is None else str(origin.offset)),
        *passed_through(result, passthrough),
    ]
    return [(k, v.encode("utf-8", "replace")) for k, v in headers]


@dataclass(frozen=True, slots=True)
class Undelivered:
    """A result whose answer the broker did not acknowledge."""

    index: int  # position in the results given to ``deliver``
    reason: str
    permanent: bool  # refused for good (over the topic's size limit): sending again cannot help


class ResponseSink(Protocol):
    """Delivers answers (and dead letters); at-least-once for what ``deliver`` reports delivered."""

    def deliver(self, results: Sequence[RequestResult]) -> list[Undelivered]:
        """Send every answer and wait for the broker's acknowledgements; what failed, in order."""
        ...

    def close(self) -> None: ...


def undeliverable(result: RequestResult, reason: str) -> RequestResult:
    """The error answer that replaces an answer the responses topic refuses for good."""
    error = ResponseTooLarge(f"the answer could not be delivered: {reason}")
    body = json.dumps({"error_code": error.error_code, "message": error.message}).encode("utf-8")
    return result.as_error(error, body)


class KafkaResponseSink:
    """``ResponseSink`` producing to ``kafka.responses_topic`` and ``kafka.dead_letter_topic``.

    Every wait is bounded by ``kafka.ack_timeout_ms``, so a broker that is down costs the
    delivery loop one timeout per attempt (and it can stop), never a hang."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        check_login(kafka)  # refused credentials: one clear error, not a bootstrap that times out
        self.producer = self._new_producer()

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        timeout_ms = self.kafka.ack_timeout_ms
        try:
            return KafkaProducer(
                **self.kafka.client_options(),
                acks="all",
                linger_ms=2,
                retries=5,
                max_request_size=self.kafka.max_message_bytes,  # the topics' max.message.bytes
                client_id=f"lakeserve-{self.kafka.group_id}",
                max_block_ms=timeout_ms,  # send() waits this long for metadata, at most
                request_timeout_ms=timeout_ms,
                delivery_timeout_ms=timeout_ms + 2,
            )
        except KafkaError as exc:
            raise ComponentError("kafka", f"cannot create the answer producer: {exc}") from exc

    def _replace_producer(self) -> None:
        """kafka-python 3.0 fails every later message to a partition once the broker refused one
        for its size (seen with 3.0.12): a fresh producer sends again."""
        old, self.producer = self.producer, self._new_producer()
        with contextlib.suppress(Exception):
            old.close(timeout=0)

    def deliver(self, results: Sequence[RequestResult]) -> list[Undelivered]:
        sent: list[tuple[int, bool, Any]] = []  # (result index, is a dead letter, future)
        failed: dict[int, Undelivered] = {}
        for i, r in enumerate(results):
            try:
                sent.append((i, False, self._send_answer(r)))
                if not r.ok:
                    sent.append((i, True, self._send_dead_letter(r, with_body=True)))
            except Exception as exc:  # raised at once: too large for the client, no metadata in time, ...
                failed[i] = Undelivered(i, f"{type(exc).__name__}: {exc}", _too_large(exc))
        self._await([future for _, _, future in sent])
        for i, dead_letter, future in sent:
            if i in failed:
                continue
            problem = self._problem(future)
            if problem is not None and _too_large(future.exception if future.is_done else None):
                # the broker refuses a whole batch when one message in it is too large: only a
                # message refused when sent alone (by a fresh producer) is too large itself
                self._replace_producer()
                problem = self._alone(results[i], dead_letter)
            if problem is None:
                continue
            if dead_letter and problem.permanent:
                self._slim_dead_letter(results[i], problem.reason)
            else:
                failed[i] = Undelivered(i, problem.reason, problem.permanent)
        return [failed[i] for i in sorted(failed)]

    def _await(self, futures: Sequence[Any]) -> None:
        """Until every future is done or ``kafka.ack_timeout_ms`` passed (flush may raise early)."""
        from kafka.errors import KafkaError

        deadline = time.monotonic() + self.kafka.ack_timeout_ms / 1000
        with contextlib.suppress(KafkaError):
            self.producer.flush(timeout=self.kafka.ack_timeout_ms / 1000)
        for future in futures:
            left = deadline - time.monotonic()
            if future.is_done or left <= 0:
                continue
            with contextlib.suppress(KafkaError):
                future.get(timeout=left)

    def _alone(self, r: RequestResult, dead_letter: bool) -> Undelivered | None:
        """Send one message by itself; what is wrong with it, if anything."""
        try:
            future = self._send_dead_letter(r, with_body=True) if dead_letter else self._send_answer(r)
        except Exception as exc:
            return Undelivered(-1, f"{type(exc).__name__}: {exc}", _too_large(exc))
        self._await([future])
        problem = self._problem(future)
        if problem is not None and problem.permanent:
            self._replace_producer()
        return problem

    def close(self) -> None:
        try:
            self.producer.close(timeout=self.kafka.ack_timeout_ms / 1000)
        except Exception as exc:  # closing is best effort; the process may be going away
            log.debug("closing the answer producer failed: %s", exc)

    def _send_answer(self, r: RequestResult) -> Any:
        return self.producer.send(
            self.kafka.responses_topic, value=r.response_body, key=r.request.origin.key,
            headers=answer_headers(r, self.kafka.passthrough_headers),
        )

    def _send_dead_letter(self, r: RequestResult, *, with_body: bool) -> Any:
        headers = dead_letter_headers(r, self.kafka.passthrough_headers)
        if not with_body:
            headers.append(("original-bytes", f"dropped: {len(r.request.body)} bytes over the topic's limit".encode()))
        return self.producer.send(
            self.kafka.dead_letter_topic, value=r.request.body if with_body else b"",
            key=r.request.origin.key, headers=headers,
        )  # fmt: skip

    def _slim_dead_letter(self, r: RequestResult, reason: str) -> None:
        """A dead letter the topic refuses with its body goes again without it (headers kept)."""
        from kafka.errors import KafkaError

        log.error("dead letter of %s refused (%s); sending it without the original bytes", r.request.request_id, reason)
        try:
            self._send_dead_letter(r, with_body=False).get(timeout=self.kafka.ack_timeout_ms / 1000)
        except KafkaError as exc:
            log.error("dead letter of %s lost: %s (the inference table holds the request)", r.request.request_id, exc)

    @staticmethod
    def _problem(future: Any) -> Undelivered | None:
        if not future.is_done:
            return Undelivered(-1, "not acknowledged in time", permanent=False)
        if future.failed():
            exc = future.exception
            return Undelivered(-1, f"{type(exc).__name__}: {exc}", _too_large(exc))
        return None


def _too_large(exc: BaseException | None) -> bool:
    """The error that sending the same message again cannot cure: it is over a size limit."""
    from kafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

    return isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError)
