"""Produce/consume round trips: keys, values, headers (binary, repeated keys) and
CreateTime timestamps come back exactly as sent, for every acks setting."""

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME

from shclient import (
    ck_consume,
    ck_produce_all,
    ck_producer,
    create_topic,
    kp_consumer,
    kp_producer,
    kp_read,
)

N = 20


def records():
    out = []
    for i in range(N):
        out.append(
            {
                "key": None if i == 3 else f"key-{i}".encode(),
                "value": None if i == 4 else f"value-{i}-".encode() + bytes(range(256)),
                "headers": []
                if i == 5
                else [
                    ("bin", bytes([0, 255, 10, 13, i])),
                    ("rep", b"first"),
                    ("text", f"h{i}".encode()),
                    ("rep", b"second"),
                    ("rep", b""),
                ],
                # Explicit CreateTime timestamps, deliberately not in order.
                "timestamp": 1_600_000_000_000 + (i * 7919) % 1000 * 1000,
            }
        )
    return out


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_confluent_round_trip(server, topic_name, acks):
    create_topic(server, topic_name, partitions=1)
    sent = records()
    producer = ck_producer(server, acks=acks)
    reports = ck_produce_all(
        producer,
        topic_name,
        [dict(r, partition=0) for r in sent],
    )
    for i, (err, msg) in enumerate(reports):
        assert err is None, f"record {i}: {err}"
        if acks != "0":
            # acks=0 gets no response, so no offset; otherwise the real one.
            assert msg.offset() == i

    got = ck_consume(server, topic_name, 0, N)
    for i, (r, m) in enumerate(zip(sent, got)):
        assert m.offset() == i
        assert m.key() == r["key"]
        assert m.value() == r["value"]
        # Repeated header keys come back repeated, in order, byte for byte.
        assert (m.headers() or []) == r["headers"], f"record {i}"
        assert m.timestamp() == (TIMESTAMP_CREATE_TIME, r["timestamp"])


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_kafka_python_round_trip(server, topic_name, acks):
    create_topic(server, topic_name, partitions=1)
    sent = records()
    producer = kp_producer(server, acks=acks)
    futures = [
        producer.send(
            topic_name,
            key=r["key"],
            value=r["value"],
            headers=r["headers"],
            timestamp_ms=r["timestamp"],
            partition=0,
        )
        for r in sent
    ]
    producer.flush(20)
    for i, f in enumerate(futures):
        md = f.get(timeout=20)
        assert md.partition == 0
        if acks != 0:
            assert md.offset == i
    producer.close(5)

    from kafka import TopicPartition as KpTopicPartition

    consumer = kp_consumer(server)
    try:
        ktp = KpTopicPartition(topic_name, 0)
        consumer.assign([ktp])
        consumer.seek(ktp, 0)
        got = kp_read(consumer, N)
    finally:
        consumer.close()
    for i, (r, m) in enumerate(zip(sent, got)):
        assert m.offset == i
        assert m.key == r["key"]
        assert m.value == r["value"]
        assert list(m.headers) == r["headers"], f"record {i}"
        assert m.timestamp == r["timestamp"]
        assert m.timestamp_type == 0  # CreateTime


def test_cross_client_round_trip(server, topic_name):
    """What one client wrote, the other reads identically."""
    create_topic(server, topic_name, partitions=1)
    sent = records()
    ck_produce_all(ck_producer(server, acks="all"), topic_name, [dict(r, partition=0) for r in sent])

    from kafka import TopicPartition as KpTopicPartition

    consumer = kp_consumer(server)
    try:
        ktp = KpTopicPartition(topic_name, 0)
        consumer.assign([ktp])
        consumer.seek(ktp, 0)
        got = kp_read(consumer, N)
    finally:
        consumer.close()
    assert [(m.key, m.value, list(m.headers), m.timestamp) for m in got] == [
        (r["key"], r["value"], r["headers"], r["timestamp"]) for r in sent
    ]
