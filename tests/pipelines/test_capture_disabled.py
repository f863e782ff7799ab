"""``auto_capture_config.enabled: false`` on the Kafka path: every request answered, offsets
committed to Kafka once answered, no inference table anywhere, nothing answered twice."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from conftest_helpers import answers_for, produce, running
from kafka import KafkaConsumer, TopicPartition

from lakeserve.jobs.demo_data import request_bodies
from lakeserve.settings import Settings


def without_capture(settings: Settings) -> Settings:
    capture = settings.endpoint.auto_capture_config.model_copy(update={"enabled": False})
    endpoint = settings.endpoint.model_copy(update={"auto_capture_config": capture})
    return settings.model_copy(update={"endpoint": endpoint})


def committed(settings: Settings) -> dict[int, int]:
    """The consumer group's committed offset per partition of the requests topic (none: left out)."""
    topic = settings.kafka.requests_topic
    consumer = KafkaConsumer(**settings.kafka.client_options(), group_id=settings.kafka.group_id,
                             enable_auto_commit=False)  # fmt: skip
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        found = {tp.partition: consumer.committed(tp) for tp in parts}
    finally:
        consumer.close(autocommit=False)
    return {p: offset for p, offset in found.items() if offset is not None}


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def test_capture_disabled_answers_commits_and_creates_no_table(service_settings: Settings, demo_assets) -> None:
    settings = without_capture(service_settings)
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    first, later = request_bodies(customers, 30, seed=5), request_bodies(customers, 6, seed=6, prefix="later")
    with running(settings):
        produce(settings, first)
        answers = answers_for(settings, len(first))
    assert {a.headers["status"] for a in answers.values()} == {"200"}
    # the clean stop committed every answered offset to Kafka
    requests_end = end_offsets(settings, settings.kafka.requests_topic)
    assert committed(settings) == {p: end for p, end in requests_end.items() if end}

    with running(settings):  # a restarted worker resumes at the committed offsets
        produce(settings, later)
        answers = answers_for(settings, len(first) + len(later))
    assert len(answers) == len(first) + len(later)
    # every request answered exactly once: the responses topic holds one answer per request
    assert sum(end_offsets(settings, settings.kafka.responses_topic).values()) == len(first) + len(later)
    requests_end = end_offsets(settings, settings.kafka.requests_topic)
    assert committed(settings) == {p: end for p, end in requests_end.items() if end}
    assert not Path(settings.inference_table_uri).exists()
