"""A record batch above the topic's max.message.bytes is refused with MESSAGE_TOO_LARGE
(error 10), promptly, and nothing is stored."""

import os
import time

import pytest

from shclient import (
    KafkaError,
    TopicPartition,
    ck_consumer,
    ck_produce_all,
    ck_producer,
    create_topic,
    kp_producer,
)

LIMIT = 10000
BIG = 20000


def high_watermark(server, topic):
    c = ck_consumer(server)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        c.close()


def test_confluent_record_above_topic_limit(server, topic_name):
    create_topic(server, topic_name, partitions=1, config={"max.message.bytes": str(LIMIT)})
    producer = ck_producer(
        server,
        acks="all",
        **{"message.max.bytes": 1_000_000, "compression.type": "none", "message.timeout.ms": 15000},
    )
    start = time.monotonic()
    ((err, msg),) = ck_produce_all(
        producer, topic_name, [{"value": os.urandom(BIG), "partition": 0}], timeout=30
    )
    elapsed = time.monotonic() - start
    assert err is not None, f"a {BIG}-byte record was accepted at offset {msg.offset()}"
    # Error 10, MESSAGE_TOO_LARGE, from the broker (librdkafka uses the same code for its own
    # refusals, but then says "Local:" and raises from produce() instead).
    assert err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err
    assert err.str().startswith("Broker:"), err
    assert not err.retriable()
    assert elapsed < 10, f"the refusal took {elapsed:.1f}s"
    # A record under the limit still goes through, and only it is stored.
    ((err, msg),) = ck_produce_all(producer, topic_name, [{"value": b"small", "partition": 0}])
    assert err is None and msg.offset() == 0
    assert high_watermark(server, topic_name) == 1


def test_kafka_python_record_above_topic_limit(server, topic_name):
    from kafka.errors import MessageSizeTooLargeError

    create_topic(server, topic_name, partitions=1, config={"max.message.bytes": str(LIMIT)})
    producer = kp_producer(server, acks="all", max_request_size=1_000_000, retries=0)
    try:
        start = time.monotonic()
        future = producer.send(topic_name, value=os.urandom(BIG), partition=0)
        with pytest.raises(MessageSizeTooLargeError) as exc:
            future.get(timeout=15)
        elapsed = time.monotonic() - start
        assert elapsed < 10, f"the refusal took {elapsed:.1f}s"
        assert exc.value.errno == 10
        md = producer.send(topic_name, value=b"small", partition=0).get(timeout=15)
        assert md.offset == 0
    finally:
        producer.close(5)
    assert high_watermark(server, topic_name) == 1
