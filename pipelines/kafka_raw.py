"""Reading one record that the Kafka client cannot decode, as raw bytes.

kafka-python decodes every record header key as UTF-8 while it fetches. A record whose header
key is not UTF-8 (any client may produce one: the protocol defines the key as bytes of a
string, and not every client checks), or a record batch that is corrupt, makes ``poll()`` raise
``CorruptRecordError`` at that position, every time: a consumer that does not step over it is
stuck there for good. The source then finds the partition that fails and reads the record here
with a plain Fetch request and a parser of the record-batch format (v2, KIP-98) that keeps the
header keys as bytes, so the record is dead-lettered with its original key and value and the
stream steps over it by offset. kafka-python cannot read the records after it in the same record
batch either (it decodes the batch from its start): those are read here too, and scored as usual.

Only what that needs is parsed: batches of magic 2, uncompressed or gzip, lz4, snappy, zstd
(through kafka-python's codecs). The fetch goes through the admin client's connection manager,
the one part of kafka-python used here that is not public API: if it ever changes, the record
is still dead-lettered and skipped, without its bytes (``read_record`` returns None).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka.record.util import decode_varint

log = logging.getLogger(__name__)

_BATCH_HEADER = 61  # bytes before the first record of a v2 batch
_COMPRESSION_MASK = 0x07


@dataclass(frozen=True, slots=True)
class RawRecord:
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[bytes, bytes | None]]


def read_batch(admin: Any, topic: str, partition: int, offset: int, max_bytes: int) -> list[RawRecord]:
    """The record at ``offset`` and those after it in its record batch, fetched from the
    partition's leader; empty if they cannot be read."""
    from kafka.protocol.consumer import FetchRequest

    try:
        leader = _leader(admin, topic, partition)
        fetch_partition = FetchRequest.FetchTopic.FetchPartition(
            partition=partition, current_leader_epoch=-1, fetch_offset=offset, last_fetched_epoch=-1,
            log_start_offset=-1, partition_max_bytes=max_bytes,
        )  # fmt: skip
        request = FetchRequest(
            replica_id=-1, max_wait_ms=500, min_bytes=1, max_bytes=max_bytes, isolation_level=0,
            session_id=0, session_epoch=-1, rack_id="", forgotten_topics_data=[],
            topics=[FetchRequest.FetchTopic(topic=topic, partitions=[fetch_partition])],
            min_version=4, max_version=12,  # by topic name (v13+ names topics by id)
        )  # fmt: skip
        manager = admin._manager
        response = manager.run(manager.send, request, leader)
        data = response.responses[0].partitions[0].records
    except Exception as exc:  # see the module docstring: the record is still skipped
        log.warning("could not fetch the raw record %s/%d@%d: %s", topic, partition, offset, exc)
        return []
    return find_records(bytes(data or b""), offset)


def find_records(buffer: bytes, offset: int) -> list[RawRecord]:
    """The records from ``offset`` to the end of its batch in a fetched record set (v2 batches)."""
    pos = 0
    while pos + 17 <= len(buffer):
        base_offset, batch_length = struct.unpack_from(">qi", buffer, pos)
        end = pos + 12 + batch_length
        if end > len(buffer):
            return []  # a partial batch at the end of the fetch
        magic = buffer[pos + 16]
        if magic == 2 and pos + _BATCH_HEADER <= end:
            (attributes,) = struct.unpack_from(">h", buffer, pos + 21)
            (count,) = struct.unpack_from(">i", buffer, pos + 57)
            records = _decompress(attributes & _COMPRESSION_MASK, buffer[pos + _BATCH_HEADER : end])
            found = _records_from(records, count, base_offset, offset) if records is not None else []
            if found:
                return found
        pos = end
    return []


def _records_from(records: bytes, count: int, base_offset: int, offset: int) -> list[RawRecord]:
    found = []
    pos = 0
    for _ in range(count):
        length, pos = decode_varint(records, pos)
        start = pos
        _, pos = decode_varint(records, pos + 1)  # attributes (1 byte), then the timestamp delta
        delta, pos = decode_varint(records, pos)
        if base_offset + delta >= offset:
            found.append(_parse_rest(records, pos, base_offset + delta))
        pos = start + length
    return found


def _parse_rest(records: bytes, pos: int, offset: int) -> RawRecord:
    key, pos = _bytes(records, pos)
    value, pos = _bytes(records, pos)
    count, pos = decode_varint(records, pos)
    headers = []
    for _ in range(max(0, count)):
        name, pos = _bytes(records, pos)
        header_value, pos = _bytes(records, pos)
        headers.append((name or b"", header_value))
    return RawRecord(offset, key, value, headers)


def _bytes(buffer: bytes, pos: int) -> tuple[bytes | None, int]:
    length, pos = decode_varint(buffer, pos)
    if length < 0:
        return None, pos
    return bytes(buffer[pos : pos + length]), pos + length


def _decompress(codec: int, data: bytes) -> bytes | None:
    from kafka import codec as kafka_codec

    decoders: dict[int, Callable[[bytes], bytes]] = {
        1: kafka_codec.gzip_decode,
        2: kafka_codec.snappy_decode,
        3: kafka_codec.lz4_decode,
        4: kafka_codec.zstd_decode,
    }
    if codec == 0:
        return data
    try:
        return bytes(decoders[codec](data))
    except Exception as exc:  # the codec's library is missing, or the data is corrupt
        log.warning("cannot decompress a record batch (codec %d): %s", codec, exc)
        return None


def _leader(admin: Any, topic: str, partition: int) -> int:
    for described in admin.describe_topics([topic]):
        for p in described.get("partitions", []):
            if p.get("partition_index") == partition:
                return int(p["leader_id"])
    raise LookupError(f"no leader known for {topic}/{partition}")
