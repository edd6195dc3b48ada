"""A long-polling fetch is woken by a produce, not by its max wait running out."""

import threading
import time

from shclient import TopicPartition, ck_consumer, ck_producer, create_topic, kp_consumer

PRODUCE_AFTER_S = 1.0
MAX_LATENCY_S = 1.5


def delayed_produce(server, topic, produced_at):
    producer = ck_producer(server, acks="all", **{"linger.ms": 0})
    producer.list_topics(topic, timeout=10)  # connect and learn the leader beforehand

    def run():
        time.sleep(PRODUCE_AFTER_S)
        produced_at.append(time.monotonic())
        producer.produce(topic, value=b"wake-up", partition=0)
        producer.flush(10)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_confluent_long_poll_wakes_on_produce(server, topic_name):
    create_topic(server, topic_name, partitions=1)
    c = ck_consumer(server, **{"fetch.wait.max.ms": 5000})
    try:
        c.assign([TopicPartition(topic_name, 0, 0)])
        assert c.poll(0.3) is None  # the consumer is fetching an empty partition
        produced_at = []
        t = delayed_produce(server, topic_name, produced_at)
        msg = None
        deadline = time.monotonic() + 10
        while msg is None and time.monotonic() < deadline:
            msg = c.poll(0.05)
        received_at = time.monotonic()
        t.join(15)
        assert msg is not None, "nothing received within 10 s"
        assert msg.error() is None
        assert (msg.offset(), msg.value()) == (0, b"wake-up")
        elapsed = received_at - produced_at[0]
        assert elapsed < MAX_LATENCY_S, f"received {elapsed:.2f}s after the produce"
    finally:
        c.close()


def test_kafka_python_long_poll_wakes_on_produce(server, topic_name):
    from kafka import TopicPartition as KpTopicPartition

    create_topic(server, topic_name, partitions=1)
    c = kp_consumer(server, fetch_max_wait_ms=5000, request_timeout_ms=30000)
    try:
        tp = KpTopicPartition(topic_name, 0)
        c.assign([tp])
        c.seek(tp, 0)
        assert c.poll(timeout_ms=300) == {}
        produced_at = []
        t = delayed_produce(server, topic_name, produced_at)
        got = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=50).values():
                got.extend(recs)
        received_at = time.monotonic()
        t.join(15)
        assert [(m.offset, m.value) for m in got] == [(0, b"wake-up")]
        elapsed = received_at - produced_at[0]
        assert elapsed < MAX_LATENCY_S, f"received {elapsed:.2f}s after the produce"
    finally:
        c.close()
