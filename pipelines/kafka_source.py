"""The Kafka request source: a consumer group on the requests topic, read in micro-batches.

Micro-batches are adaptive: a poll waits for the first record, then takes what is already
fetched or arrives back to back (polls that do not wait), up to ``limits.max_batch_size``
records, and stops collecting when such a poll comes back empty or ``limits.max_batch_wait_ms``
has passed since the first record (an upper bound, never a delay). So an idle worker scores a
lone record at once, and a busy one scores in one batch what queued while the previous batch
ran: batches grow with the load, with no setting to tune.

Offsets are never committed automatically: the delivery loop
(:mod:`lakeserve.pipelines.delivery_loop`) commits them once the batch's inference rows are in
Delta. Request ids are derived from (group, topic, partition, offset), so a record replayed
after a crash keeps its id and a consumer of the answers can drop duplicates.

Two things the source handles itself, since only Kafka knows them:

- **Topic identity.** Every commit carries the topic's id (KIP-516) in its metadata. When the
  group is assigned a partition whose committed offset was written for another topic id (the
  topic was deleted and created again), the partition is read from its beginning, with a
  warning: an offset of the old topic means nothing in the new one.
- **Records the client cannot decode** (a header key that is not UTF-8, a corrupt batch): the
  record is read raw (:mod:`lakeserve.pipelines.kafka_raw`), handed on as a request with a
  ``defect`` (answered 400, dead-lettered with its original bytes, logged) and stepped over.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from kafka.consumer.subscription_state import ConsumerRebalanceListener

from lakeserve.errors import ComponentError
from lakeserve.pipelines.kafka_errors import check_login
from lakeserve.pipelines.kafka_raw import RawRecord, read_batch
from lakeserve.pipelines.kafka_settings import KafkaSettings
from lakeserve.scoring.records import Origin, ScoringRequest
from lakeserve.scoring.settings import Limits

if TYPE_CHECKING:
    from lakeserve.pipelines.metrics import LoopMetrics

log = logging.getLogger(__name__)

Partition = tuple[str, int]  # (topic, partition)
_REQUEST_IDS = uuid.UUID("6c8f2f7e-5d3a-4b8e-9a51-7e0c1d2b3a4f")
_IDENTITY = "lakeserve:topic_id="  # prefix of the commit metadata


class RequestSource(Protocol):
    """Where scoring requests come from, with positions the delivery loop commits."""

    def poll(self) -> list[ScoringRequest]:
        """The next micro-batch (possibly empty)."""
        ...

    def commit(self, positions: Mapping[Partition, int], *, wait: bool = True) -> bool:
        """Mark everything before each position (the next offset to read) as done; False when the
        group refused it (a rebalance). ``wait=False`` sends it without waiting (rebalance callback)."""
        ...

    def identities(self, partitions: list[Partition]) -> dict[Partition, str | None]:
        """The topic id of each partition's topic (None when the broker does not say)."""
        ...

    def seek(self, partition: Partition, offset: int) -> None:
        """Read ``partition`` from ``offset`` again (records polled before their owner was ready)."""
        ...

    def idle(self, seconds: float) -> None:
        """Wait ``seconds`` with consumption paused, staying in the group (backpressure)."""
        ...

    def close(self) -> None: ...


class RebalanceHandler(Protocol):
    def assigned(self, partitions: list[Partition]) -> None: ...
    def revoked(self, partitions: list[Partition]) -> None: ...


def request_id(group_id: str, topic: str, partition: int, offset: int, topic_id: str | None = None) -> str:
    """A stable id for the record at this position, the same on every replay; a topic created
    again under the same name (another topic id) gives its records other ids."""
    identity = f"{topic}#{topic_id}" if topic_id else topic
    name = f"{group_id}/{identity}/{partition}/{offset}".encode()
    digest = bytearray(hashlib.sha1(_REQUEST_IDS.bytes + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return digest.hex()  # uuid.uuid5(_REQUEST_IDS, name).hex, without building UUID objects (hot path)


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
        from kafka import KafkaAdminClient, KafkaConsumer
        from kafka.errors import KafkaError

        self.kafka, self.limits, self.clock = kafka, limits, clock
        self.metrics = metrics  # optional hook: told the consumer lag before each poll and after each idle one
        # a record is at most the topic's max.message.bytes, which is at least the largest request
        self._max_fetch_bytes = max(kafka.max_message_bytes, limits.max_request_bytes + 1024 * 1024)
        self._topic_ids: dict[str, str | None] = {}
        check_login(kafka)  # refused credentials: one clear error, not a bootstrap that times out
        try:
            self.admin = KafkaAdminClient(**kafka.client_options(), client_id=f"lakeserve-{kafka.group_id}-admin",
                                          request_timeout_ms=kafka.ack_timeout_ms)  # fmt: skip
            self.consumer = KafkaConsumer(
                **kafka.client_options(),
                group_id=kafka.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=kafka.session_timeout_ms,
                heartbeat_interval_ms=max(500, kafka.session_timeout_ms // 5),
                max_poll_records=limits.max_batch_size,
                max_partition_fetch_bytes=self._max_fetch_bytes,
                fetch_max_bytes=max(52_428_800, self._max_fetch_bytes),
                client_id=f"lakeserve-{kafka.group_id}",
                metadata_max_age_ms=10_000,  # a missed assignment heals in seconds, not minutes
                request_timeout_ms=max(kafka.ack_timeout_ms, kafka.session_timeout_ms + 1000),
            )
            # Subscribe, then fetch metadata before the first poll joins the group: the coordinator
            # takes its snapshot of the subscribed topic's partitions from this update. Without it
            # the group leader assigns from an empty snapshot; either nothing (idle until the next
            # refresh) or, once metadata arrives, the snapshot "changes" and forces a second
            # rebalance right after the first, in which kafka-python 3 has been seen to stall.
            self.consumer.subscribe([kafka.requests_topic], listener=_Listener(handler))
            if kafka.requests_topic not in self.consumer.topics():
                self.close()
                raise ComponentError(
                    "kafka", f"topic {kafka.requests_topic!r} does not exist (lakeserve up creates it)"
                )
        except KafkaError as exc:
            raise ComponentError("kafka", f"cannot join group {kafka.group_id!r}: {exc}") from exc

    # -- reading ---------------------------------------------------------------------------
    def poll(self) -> list[ScoringRequest]:
        """The first record (waiting up to 100 ms for it), then what is at hand without waiting."""
        from kafka.errors import CorruptRecordError

        if self.metrics is not None:
            self.metrics.consumer_lag(self.lag())
        self._resume_all()
        batch: list[ScoringRequest] = []
        limit, wait_ms = self.limits.max_batch_size, 100
        deadline = float("inf")
        while len(batch) < limit and time.monotonic() < deadline:
            try:
                records = self.consumer.poll(timeout_ms=wait_ms, max_records=limit - len(batch))
            except CorruptRecordError as exc:
                batch.extend(self._undecodable(exc))
                break
            if not records:
                break
            for tp, messages in records.items():
                batch.extend(self._request(tp.topic, tp.partition, m) for m in messages)
            if wait_ms:
                wait_ms, deadline = 0, time.monotonic() + self.limits.max_batch_wait_ms / 1000
        return batch

    def idle(self, seconds: float) -> None:
        """Poll with every partition paused: heartbeats, rebalances and metadata go on, no records.
        Records of a partition assigned during the poll (so not paused yet) are sought back."""
        from kafka.errors import KafkaError

        self.consumer.pause(*self.consumer.assignment())
        try:
            records = self.consumer.poll(timeout_ms=int(seconds * 1000))
        except KafkaError as exc:  # the broker is down too: waiting is all there is to do
            log.debug("poll while paused failed: %s", exc)
            time.sleep(seconds)
            return
        for tp, messages in records.items():
            if messages:
                self.consumer.seek(tp, messages[0].offset)
        if self.metrics is not None:  # a rebalance during an outage moves partitions too
            self.metrics.consumer_lag(self.lag())

    def seek(self, partition: Partition, offset: int) -> None:
        from kafka import TopicPartition

        self.consumer.seek(TopicPartition(*partition), offset)

    # -- positions -------------------------------------------------------------------------
    def commit(self, positions: Mapping[Partition, int], *, wait: bool = True) -> bool:
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
            return True
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(o, _IDENTITY + (self._topic_ids.get(t) or ""), -1)
            for (t, p), o in positions.items()
        }
        if not wait:
            # kafka-python runs rebalance callbacks on its IO thread, where a blocking commit is
            # refused; a lost async commit only means the next owner skips a few more records.
            self.consumer.commit_async(offsets)
            return True
        try:
            self.consumer.commit(offsets, timeout_ms=self.kafka.ack_timeout_ms)
        except (CommitFailedError, RebalanceInProgressError, IllegalGenerationError, UnknownMemberIdError) as exc:
            # The group moved on (rebalance): the rows are logged with their txn versions, so the
            # new owner skips them; the answers were sent. Nothing is lost.
            log.warning("offset commit refused after a rebalance: %s", exc)
            return False
        except KafkaError as exc:
            # Not fatal either: the table holds the versions; the next commit covers these.
            log.warning("offset commit failed, the next one covers it: %s", exc)
            return False
        return True

    def identities(self, partitions: list[Partition]) -> dict[Partition, str | None]:
        """Topic ids from the broker (read afresh: a recreated topic has a new one), and each
        partition read from its start when its committed offset belongs to another topic id."""
        from kafka.errors import KafkaError

        topics = sorted({t for t, _ in partitions})
        try:
            described = self.admin.describe_topics(topics)
        except KafkaError as exc:
            raise ComponentError("kafka", f"cannot describe {topics}: {exc}") from exc
        for d in described:
            self._topic_ids[str(d.get("name") or d.get("topic"))] = _topic_id(d.get("topic_id"))
        for p in partitions:
            self._check_identity(p)
        return {p: self._topic_ids.get(p[0]) for p in partitions}

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

    def close(self) -> None:
        """Leave the group within ``kafka.ack_timeout_ms``, broker up or down."""
        consumer, admin = getattr(self, "consumer", None), getattr(self, "admin", None)
        try:
            if consumer is not None:
                consumer.close(autocommit=False, timeout_ms=self.kafka.ack_timeout_ms)
            if admin is not None:
                admin.close()
        except Exception as exc:  # closing is best effort; the process may be going away
            log.debug("closing a Kafka client failed: %s", exc)

    # -- helpers ---------------------------------------------------------------------------
    def _resume_all(self) -> None:
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)

    def _check_identity(self, p: Partition) -> None:
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        tp = TopicPartition(*p)
        try:
            committed = self.consumer.committed(tp, metadata=True, timeout_ms=self.kafka.ack_timeout_ms)
        except KafkaError as exc:
            raise ComponentError("kafka", f"cannot read the committed offset of {p}: {exc}") from exc
        metadata = getattr(committed, "metadata", "") or ""
        current = self._topic_ids.get(p[0])
        if not metadata.startswith(_IDENTITY) or current is None:
            return  # committed by another client (or never): Kafka's own position stands
        written_for = metadata.removeprefix(_IDENTITY) or None
        if written_for is not None and written_for != current:
            log.warning(
                "%s/%d: the committed offset %d belongs to topic id %s, the topic now has id %s "
                "(deleted and created again?): reading the partition from its beginning",
                p[0], p[1], committed.offset, written_for, current,
            )  # fmt: skip
            self.consumer.seek_to_beginning(tp)

    def _undecodable(self, exc: Exception) -> list[ScoringRequest]:
        """The partition the client fails on, read raw from its position to the end of that record
        batch: records it cannot decode become requests with a defect, the others are scored as
        usual; the partition then steps over the batch."""
        found: list[ScoringRequest] = []
        for tp in sorted(self.consumer.assignment()):
            position = self.consumer.position(tp, timeout_ms=self.kafka.ack_timeout_ms)
            if position is None or not self._fails_at(tp, position):
                continue
            raw = read_batch(self.admin, tp.topic, tp.partition, position, self._max_fetch_bytes)
            if not raw:
                log.error("%s/%d@%d cannot be read (%s); dead-lettering it without its bytes",
                          tp.topic, tp.partition, position, exc)  # fmt: skip
                found.append(self._defective(tp.topic, tp.partition, position, None, str(exc)))
                self.consumer.seek(tp, position + 1)
                continue
            for record in raw:
                found.append(self._raw_request(tp.topic, tp.partition, record, str(exc)))
            self.consumer.seek(tp, raw[-1].offset + 1)
        if not found:
            raise ComponentError("kafka", f"a fetch failed and no partition could be blamed: {exc}")
        return found

    def _raw_request(self, topic: str, partition: int, record: RawRecord, why: str) -> ScoringRequest:
        try:
            headers = {k.decode("utf-8"): (v or b"").decode("utf-8", "replace") for k, v in record.headers}
        except UnicodeDecodeError:
            log.error("%s/%d@%d has a header key that is not UTF-8 (%s); dead-lettering it",
                      topic, partition, record.offset, why)  # fmt: skip
            return self._defective(topic, partition, record.offset, record, why)
        return ScoringRequest(
            request_id=request_id(self.kafka.group_id, topic, partition, record.offset, self._topic_ids.get(topic)),
            body=record.value or b"",
            received_at=self.clock(),
            origin=Origin("kafka", topic, partition, record.offset, record.key),
            headers=headers,
        )

    def _fails_at(self, tp: Any, offset: int) -> bool:
        """Whether a throwaway consumer fails to decode ``tp`` at ``offset``."""
        from kafka import KafkaConsumer
        from kafka.errors import CorruptRecordError

        probe = KafkaConsumer(**self.kafka.client_options(), enable_auto_commit=False,
                              max_partition_fetch_bytes=self._max_fetch_bytes)  # fmt: skip
        try:
            probe.assign([tp])
            probe.seek(tp, offset)
            deadline = time.monotonic() + self.kafka.ack_timeout_ms / 1000
            while time.monotonic() < deadline:
                if probe.poll(timeout_ms=200, max_records=1):
                    return False
            return False
        except CorruptRecordError:
            return True
        finally:
            probe.close(autocommit=False)

    def _defective(self, topic: str, partition: int, offset: int, raw: RawRecord | None, why: str) -> ScoringRequest:
        headers = {} if raw is None else {k.decode("utf-8", "replace"): (v or b"").decode("utf-8", "replace")
                                          for k, v in raw.headers}  # fmt: skip
        return ScoringRequest(
            request_id=request_id(self.kafka.group_id, topic, partition, offset, self._topic_ids.get(topic)),
            body=(raw.value or b"") if raw is not None else b"",
            received_at=self.clock(),
            origin=Origin("kafka", topic, partition, offset, raw.key if raw is not None else None),
            headers=headers,
            defect=f"the record cannot be decoded by the Kafka client: {why}"
            + ("" if raw is not None else " (its bytes could not be read)"),
        )

    def _request(self, topic: str, partition: int, message: Any) -> ScoringRequest:
        headers = {k: v.decode("utf-8", "replace") for k, v in (message.headers or []) if v is not None}
        return ScoringRequest(
            request_id=request_id(self.kafka.group_id, topic, partition, message.offset, self._topic_ids.get(topic)),
            body=message.value if message.value is not None else b"",
            received_at=self.clock(),
            origin=Origin("kafka", topic, partition, message.offset, message.key),
            headers=headers,
        )


def _topic_id(value: Any) -> str | None:
    """A topic id as the broker gave it (a UUID, or its string form), None for the zero id."""
    if value is None:
        return None
    parsed = value if isinstance(value, uuid.UUID) else _parse_uuid(str(value))
    if parsed is None:
        return str(value) or None
    return None if parsed.int == 0 else str(parsed)


def _parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Adapts kafka-python's rebalance callbacks to (topic, partition) pairs."""

    def __init__(self, handler: RebalanceHandler) -> None:
        self.handler = handler

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.handler.revoked(sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.handler.assigned(sorted((tp.topic, tp.partition) for tp in assigned))
