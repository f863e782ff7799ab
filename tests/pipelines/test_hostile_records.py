"""Records no worker may die on, through the real broker: one the Kafka client cannot decode (a
header key that is not UTF-8) and bodies built to break parsers. Each is answered with a 4xx,
dead-lettered with its original bytes and logged; the stream goes on."""

from __future__ import annotations

import json

from conftest_helpers import answers_for, body, read_topic, running, settings_for, table_rows
from kafka import KafkaProducer

from lakeserve.settings import Settings


class RawHeaderKey(str):
    """A header key whose bytes on the wire are ``raw`` (not UTF-8): kafka-python encodes header
    keys with ``str.encode``, which this overrides. Other clients send such keys as they are."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawHeaderKey:
        key = super().__new__(cls, "x" * len(raw))
        key.raw = raw
        return key

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


HOSTILE: list[tuple[str, bytes, int]] = [
    ("deep-nesting", b'{"dataframe_records": [{"customer_id": 7, "amount": ' + b"[" * 5000 + b"]" * 5000 + b"}]}", 400),
    ("lone-surrogate-key", b'{"dataframe_records": [{"customer_id": "\\ud800", "amount": 1.0}]}', 400),
    ("wrong-typed-key", body(customer_id="abc"), 400),
    ("integer-beyond-int64", body(hour_of_day=2**70), 400),
    ("lone-surrogate-id", json.dumps({"dataframe_records": [json.loads(body())["dataframe_records"][0]],
                                      "client_request_id": "\ud800"}).encode("utf-8", "surrogatepass"), 400),
]  # fmt: skip


def test_undecodable_and_hostile_records_are_answered_dead_lettered_and_logged(
    stack: Settings, demo_assets: object
) -> None:
    settings = settings_for(stack, "hostile-records")
    producer = KafkaProducer(**settings.kafka.client_options())
    topic = settings.kafka.requests_topic
    sends = [(b"before", body(customer_id=1), [])]
    sends.append((b"bad-header", body(customer_id=2), [(RawHeaderKey(b"\xff\xfe"), b"v"), ("trace", b"t-1")]))
    sends += [(name.encode(), raw, []) for name, raw, _ in HOSTILE]
    sends += [(f"after-{c}".encode(), body(customer_id=c), []) for c in range(3, 8)]
    with running(settings) as worker:
        for key, value, headers in sends:
            producer.send(topic, key=key, value=value, headers=headers, partition=0)  # one partition: in order
        producer.flush()
        producer.close()
        answers = answers_for(settings, len(sends))
        worker.loop.flush()

    by_key = {a.key: a for a in answers.values()}
    assert by_key[b"bad-header"].headers["status"] == "400"
    assert by_key[b"bad-header"].body["error_code"] == "BAD_REQUEST"
    assert "cannot be decoded" in by_key[b"bad-header"].body["message"]
    for name, _raw, status in HOSTILE:
        assert by_key[name.encode()].headers["status"] == str(status), (name, by_key[name.encode()].body)
    for key in [b"before", *(f"after-{c}".encode() for c in range(3, 8))]:
        assert by_key[key].headers["status"] == "200", by_key[key].body  # the stream went on

    failed = 1 + len(HOSTILE)
    letters = {d.key: d for d in read_topic(settings, settings.kafka.dead_letter_topic, lambda s: len(s) >= failed)}
    assert letters[b"bad-header"].body["raw"] == sends[1][1]  # its original bytes, read raw
    assert letters[b"bad-header"].headers["source-offset"] == "1"
    for name, raw, _ in HOSTILE:
        assert letters[name.encode()].body["raw"] == raw

    rows = table_rows(settings)
    assert sorted(rows.request_id) == sorted(answers)  # one row per request: each had one record
    assert (rows.groupby("request_id").size() == 1).all()
    assert worker.loop.stats.undecodable == 1
