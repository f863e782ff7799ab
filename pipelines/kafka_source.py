"""The Kafka request source: a consumer group on the requests topic, read in micro-batches.

A micro-batch is bounded by ``limits.max_batch_size`` records and ``limits.max_batch_wait_ms``
of waiting once the first record is in hand. Offsets are never committed automatically: the
delivery loop (:mod:`lakeserve.pipelines.checkpoint`) commits them once the batch's inference
rows are in Delta. Request ids are derived from (group, topic, partition, offset), so a record
replayed after a crash keeps its id and a consumer of the answers can drop duplicates.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from kafka.consumer.subscription_state import ConsumerRebalanceListener

from lakeserve.errors import ComponentError
from lakeserve.pipelines.kafka_settings import KafkaSettings
from lakeserve.scoring.records import Origin, ScoringRequest
from lakeserve.scoring.settings import Limits

if TYPE_CHECKING:
    from lakeserve.pipelines.metrics import LoopMetrics

log = logging.getLogger(__name__)

Partition = tuple[str, int]  # (topic, partition)
_REQUEST_IDS = uuid.UUID("6c8f2f7e-5d3a-4b8e-9a51-7e0c1d2b3a4f")


class RequestSource(Protocol):
    """Where scoring requests come from, with positions the delivery loop commits."""

    def poll(self) -> list[ScoringRequest]:
        """The next micro-batch (possibly empty)."""
        ...

    def commit(self, positions: Mapping[Partition, int], *, wait: bool = True) -> None:
        """Mark everything before each position (the next offset to read) as done; with
        ``wait=False`` the commit is sent and not awaited (inside a rebalance callback)."""
        ...

    def close(self) -> None: ...


class RebalanceHandler(Protocol):
    def assigned(self, partitions: list[Partition]) -> None: ...
    def revoked(self, partitions: list[Partition]) -> None: ...


def request_id(group_id: str, topic: str, partition: int, offset: int) -> str:
    """A stable id for the record at this position, the same on every replay."""
    return uuid.uuid5(_REQUEST_IDS, f"{group_id}/{topic}/{partition}/{offset}").hex


class KafkaRequestSource:
    """``RequestSource`` over a kafka-python consumer in ``kafka.group_id``."""

    def __init__(
        self,
        kafka: KafkaSettings,
        limits: Limits,
        handler: RebalanceHandler,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: LoopMetrics | None = None,
    ) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        self.kafka, self.limits, self.clock = kafka, limits, clock
        self.metrics = metrics  # optional hook: told the consumer lag before each poll
        try:
            self.consumer = KafkaConsumer(
                **kafka.client_options(),
                group_id=kafka.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=kafka.session_timeout_ms,
                heartbeat_interval_ms=max(500, kafka.session_timeout_ms // 5),
                max_poll_records=limits.max_batch_size,
                max_partition_fetch_bytes=limits.max_request_bytes + 1024 * 1024,
                fetch_max_bytes=max(52_428_800, limits.max_request_bytes + 1024 * 1024),
                client_id=f"lakeserve-{kafka.group_id}",
                metadata_max_age_ms=10_000,  # a missed assignment heals in seconds, not minutes
            )
            # Subscribe, then fetch metadata before the first poll joins the group: the coordinator
            # takes its snapshot of the subscribed topic's partitions from this update. Without it
            # the group leader assigns from an empty snapshot; either nothing (idle until the next
            # refresh) or, once metadata arrives, the snapshot "changes" and forces a second
            # rebalance right after the first, in which kafka-python 3 has been seen to stall.
            self.consumer.subscribe([kafka.requests_topic], listener=_Listener(handler))
            if kafka.requests_topic not in self.consumer.topics():
                self.consumer.close()
                raise ComponentError(
                    "kafka", f"topic {kafka.requests_topic!r} does not exist (lakeserve up creates it)"
                )
        except KafkaError as exc:
            raise ComponentError("kafka", f"cannot join group {kafka.group_id!r}: {exc}") from exc

    def poll(self) -> list[ScoringRequest]:
        """Records until the batch is full or ``max_batch_wait_ms`` passed since the first one."""
        if self.metrics is not None:
            self.metrics.consumer_lag(self.lag())
        batch: list[ScoringRequest] = []
        deadline: float | None = None
        while len(batch) < self.limits.max_batch_size:
            wait_ms = 100 if deadline is None else int(max(0.0, deadline - time.monotonic()) * 1000)
            records = self.consumer.poll(timeout_ms=wait_ms, max_records=self.limits.max_batch_size - len(batch))
            for tp, messages in records.items():
                batch.extend(self._request(tp.topic, tp.partition, m) for m in messages)
            if not batch:
                return batch
            if deadline is None:
                deadline = time.monotonic() + self.limits.max_batch_wait_ms / 1000
            if time.monotonic() >= deadline:
                break
        return batch

    def commit(self, positions: Mapping[Partition, int], *, wait: bool = True) -> None:
        from kafka import TopicPartition
        from kafka.errors import (
            CommitFailedError,
            IllegalGenerationError,
            KafkaError,
            RebalanceInProgressError,
            UnknownMemberIdError,
        )
        from kafka.structs import OffsetAndMetadata

        if not positions:
            return
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in positions.items()}
        if not wait:
            # kafka-python runs rebalance callbacks on its IO thread, where a blocking commit is
            # refused; a lost async commit only means the next owner skips a few more records.
            self.consumer.commit_async(offsets)
            return
        try:
            self.consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError, IllegalGenerationError, UnknownMemberIdError) as exc:
            # The group moved on (rebalance): the rows are logged with their txn versions, so the
            # new owner skips them; the answers were sent. Nothing is lost.
            log.warning("offset commit refused after a rebalance: %s", exc)
        except KafkaError as exc:
            raise ComponentError("kafka", f"offset commit failed: {exc}") from exc

    def close(self) -> None:
        self.consumer.close(autocommit=False)

    def lag(self) -> dict[Partition, int]:
        """Highwater minus position per assigned partition, as of the last fetch (no waiting)."""
        from kafka.errors import KafkaError

        lags: dict[Partition, int] = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            try:
                position = self.consumer.position(tp, timeout_ms=0)
            except KafkaError:  # moved away meanwhile: no figure this time
                continue
            if high is not None and position is not None:
                lags[(tp.topic, tp.partition)] = max(0, high - position)
        return lags

    def _request(self, topic: str, partition: int, message: Any) -> ScoringRequest:
        headers = {k: v.decode("utf-8", "replace") for k, v in (message.headers or []) if v is not None}
        return ScoringRequest(
            request_id=request_id(self.kafka.group_id, topic, partition, message.offset),
            body=message.value if message.value is not None else b"",
            received_at=self.clock(),
            origin=Origin("kafka", topic, partition, message.offset, message.key),
            headers=headers,
        )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Adapts kafka-python's rebalance callbacks to (topic, partition) pairs."""

    def __init__(self, handler: RebalanceHandler) -> None:
        self.handler = handler

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.handler.revoked(sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.handler.assigned(sorted((tp.topic, tp.partition) for tp in assigned))
