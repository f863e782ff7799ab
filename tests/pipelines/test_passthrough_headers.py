"""``kafka.passthrough_headers``: named request headers (correlation ids) come back on the answer
and the dead letter, by exact name; other request headers are not copied."""

from __future__ import annotations

from conftest_helpers import body, read_topic, running
from kafka import KafkaProducer

from lakeserve.settings import Settings


def test_listed_request_headers_come_back_on_answer_and_dead_letter(service_settings: Settings) -> None:
    kafka = service_settings.kafka.model_copy(update={"passthrough_headers": ["correlation-id", "x-tenant"]})
    settings = service_settings.model_copy(update={"kafka": kafka})
    sends = [
        (b"good", body(), [("correlation-id", b"corr-1"), ("x-tenant", b"acme"), ("traceparent", b"00-ab-cd-01"),
                           ("x-secret", b"do-not-echo")]),
        (b"bad", b"{not json", [("correlation-id", b"corr-2"), ("x-secret", b"do-not-echo")]),
        (b"bare", body(), []),
    ]  # fmt: skip
    producer = KafkaProducer(**settings.kafka.client_options(), acks="all")
    with running(settings):
        for key, value, headers in sends:
            producer.send(settings.kafka.requests_topic, key=key, value=value, headers=headers)
        producer.flush()
        producer.close()
        answers = {a.key: a for a in read_topic(settings, settings.kafka.responses_topic, lambda a: len(a) >= 3)}
        letters = read_topic(settings, settings.kafka.dead_letter_topic, lambda a: len(a) >= 1)

    good, bad, bare = answers[b"good"].headers, answers[b"bad"].headers, answers[b"bare"].headers
    assert good["status"] == "200"
    assert good["correlation-id"] == "corr-1"
    assert good["x-tenant"] == "acme"
    assert "traceparent" not in good  # a default name, but not in this endpoint's list
    assert "x-secret" not in good
    assert bad["status"] == "400"
    assert bad["correlation-id"] == "corr-2"
    assert "x-secret" not in bad
    assert set(bare) <= {"request-id", "status", "client-request-id", "served-model-name"}
    assert "correlation-id" not in bare
    (letter,) = letters
    assert letter.key == b"bad"
    assert letter.headers["correlation-id"] == "corr-2"
    assert "x-secret" not in letter.headers
