"""Keyed records land where the Java client would put them: murmur2(key) & 0x7fffffff % n."""

from shclient import (
    ck_consume,
    ck_produce_all,
    ck_producer,
    create_topic,
    java_partition,
    kp_producer,
    murmur2,
)

PARTITIONS = 5
KEYS = [b"", b"21", b"foobar", b"a", b"ab", b"abc", b"abcd", b"abcde"] + [
    f"user-{i}".encode() for i in range(60)
] + [bytes([i, 255 - i, 0x80 | i]) for i in range(20)]


def test_murmur2_matches_java():
    # Values from org.apache.kafka.common.utils.UtilsTest.
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"") == 275646681
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(bytes([ord("a"), ord("b"), ord("c")])) == 479470107


def expected_spread():
    parts = {java_partition(k, PARTITIONS) for k in KEYS}
    assert len(parts) == PARTITIONS, "the keys should exercise every partition"


def check_read_back(server, topic, placed):
    """placed: {partition: [key, ...] in offset order}"""
    for p in range(PARTITIONS):
        got = ck_consume(server, topic, p, len(placed.get(p, [])))
        assert [m.key() for m in got] == placed.get(p, [])
        assert all(java_partition(m.key(), PARTITIONS) == p for m in got)


def test_confluent_murmur2_random(server, topic_name):
    expected_spread()
    create_topic(server, topic_name, partitions=PARTITIONS)
    producer = ck_producer(server, partitioner="murmur2_random", acks="all")
    reports = ck_produce_all(producer, topic_name, [{"key": k, "value": b"v" + k} for k in KEYS])
    placed = {}
    for k, (err, msg) in zip(KEYS, reports):
        assert err is None
        assert msg.partition() == java_partition(k, PARTITIONS), f"key {k!r}"
        placed.setdefault(msg.partition(), []).append(k)
    check_read_back(server, topic_name, placed)


def test_kafka_python_default_partitioner(server, topic_name):
    expected_spread()
    create_topic(server, topic_name, partitions=PARTITIONS)
    producer = kp_producer(server, acks="all")
    futures = [producer.send(topic_name, key=k, value=b"v" + k) for k in KEYS]
    producer.flush(20)
    placed = {}
    for k, f in zip(KEYS, futures):
        md = f.get(timeout=20)
        assert md.partition == java_partition(k, PARTITIONS), f"key {k!r}"
        placed.setdefault(md.partition, []).append(k)
    producer.close(5)
    check_read_back(server, topic_name, placed)
