"""Kafka request ids are ``uuid5`` of the record's position: rows written by earlier versions and
answers already sent keep matching replays, so the hand-rolled hot-path form must equal it."""

from __future__ import annotations

import uuid

import pytest

from lakeserve.pipelines.kafka_source import _REQUEST_IDS, request_id


@pytest.mark.parametrize(
    ("group", "topic", "partition", "offset", "topic_id"),
    [("g", "t", 0, 0, None), ("g-x", "t.a", 3, 2**62, "5f2c8a3e-1b7d-4c1e-9e4a-2b6f0d9c7a11"), ("ü", "t", 1, 2, None)],
)
def test_a_request_id_is_the_uuid5_of_its_position(
    group: str, topic: str, partition: int, offset: int, topic_id: str | None
) -> None:
    identity = f"{topic}#{topic_id}" if topic_id else topic
    expected = uuid.uuid5(_REQUEST_IDS, f"{group}/{identity}/{partition}/{offset}").hex
    assert request_id(group, topic, partition, offset, topic_id) == expected


def test_another_topic_id_gives_other_ids() -> None:
    assert request_id("g", "t", 0, 5, "a") != request_id("g", "t", 0, 5, "b") != request_id("g", "t", 0, 5)
