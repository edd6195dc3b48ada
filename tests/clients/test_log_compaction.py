"""Log compaction (cleanup.policy=compact) as Kafka clients written elsewhere see it: after
compaction, confluent-kafka, kafka-python and kcat read exactly the latest record of every key
at its original offset (tombstones included while delete.retention.ms lasts), step over the
gaps compaction left to the end of the partition, and producing a record without a key to a
compacted topic is refused with INVALID_RECORD."""

import shutil
import subprocess
import time

import confluent_kafka
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.admin import ConfigResource

from shclient import ck_admin, ck_consumer, ck_produce_all, ck_producer, create_topic, kp_consumer

# Compaction passes every 200 ms, so the tests see them within seconds.
SERVER_ARGS = ["--compaction-interval-ms", "200"]

KEYS = 15
ROUNDS = 12


def produce_rounds(server, topic, tombstone_every=4, compression="none"):
    """ROUNDS rounds of one record per key (some tombstones), each round flushed on its own so
    they land in separate index entries, then one record of a key nothing else has (the newest
    entry is not compacted, like Kafka's active segment). Returns every (offset, key, value)."""
    producer = ck_producer(server, **{"compression.type": compression})
    produced = []
    n = 0
    for r in range(ROUNDS + 1):
        records = []
        if r < ROUNDS:
            for k in range(KEYS):
                n += 1
                value = None if n % tombstone_every == 0 else f"v{n}".encode()
                records.append({"key": f"key-{k}".encode(), "value": value})
        else:
            records.append({"key": b"end", "value": b"marker"})
        for err, msg in ck_produce_all(producer, topic, records):
            assert err is None, err
            produced.append((msg.offset(), msg.key(), msg.value()))
    return produced


def latest_per_key(produced):
    latest = {}
    for offset, key, value in produced:
        latest[key] = (offset, key, value)
    return sorted(latest.values())


def ck_read_to_end(server, topic):
    """Every record from the beginning until librdkafka reports the end of the partition."""
    c = ck_consumer(server, **{"enable.partition.eof": True})
    out = []
    try:
        c.assign([TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return out
                raise AssertionError(f"consumer error: {msg.error()}")
            out.append((msg.offset(), msg.key(), msg.value()))
        raise AssertionError(f"no end of partition within 20 s after {len(out)} records")
    finally:
        c.close()


def wait_compacted(server, topic, expected, timeout=30):
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = ck_read_to_end(server, topic)
        if seen == expected:
            return
        time.sleep(0.3)
    raise AssertionError(
        f"after {timeout} s the topic reads {len(seen)} records, not the {len(expected)} "
        f"latest per key: {seen[:20]}…"
    )


def test_clients_read_the_latest_record_per_key_at_its_offset(server, topic_name):
    create_topic(
        server,
        topic_name,
        config={
            "cleanup.policy": "compact",
            "delete.retention.ms": "3600000",
            "min.cleanable.dirty.ratio": "0.01",
        },
    )
    produced = produce_rounds(server, topic_name, compression="lz4")
    expected = latest_per_key(produced)
    assert len(expected) == KEYS + 1
    assert any(value is None for _, _, value in expected), "some latest records are tombstones"
    wait_compacted(server, topic_name, expected)
    end = produced[-1][0] + 1

    # kafka-python: the same records at the same offsets, and its position reaches the end.
    c = kp_consumer(server)
    try:
        from kafka import TopicPartition as KpTopicPartition

        tp = KpTopicPartition(topic_name, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        got = []
        deadline = time.monotonic() + 20
        while c.position(tp) < end and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                got.extend((r.offset, r.key, r.value) for r in recs)
        assert got == expected
        assert c.position(tp) == end
    finally:
        c.close()

    # kcat: -e exits at the end of the partition, after exactly those records.
    kcat = shutil.which("kcat")
    assert kcat, "kcat is installed by scripts/test"
    out = subprocess.run(
        [kcat, "-C", "-b", server.bootstrap, "-t", topic_name, "-p", "0", "-o", "beginning",
         "-e", "-q", "-Z", "-f", "%o %k %S\n"],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout.decode()
    rows = [line.split(" ") for line in out.splitlines()]
    assert [(int(o), k.encode()) for o, k, _ in rows] == [(o, k) for o, k, _ in expected]
    # %S is the value size, -1 for a null value (a tombstone).
    assert [int(s) for _, _, s in rows] == [-1 if v is None else len(v) for _, _, v in expected]

    # The configs are reported as set.
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic_name)
    admin = ck_admin(server)  # keep a reference: a collected client cancels its futures
    described = admin.describe_configs([resource])[resource].result(timeout=10)
    assert described["cleanup.policy"].value == "compact"
    assert described["delete.retention.ms"].value == "3600000"
    assert described["min.cleanable.dirty.ratio"].value == "0.01"


def test_tombstones_go_after_delete_retention_ms(server, topic_name):
    create_topic(
        server,
        topic_name,
        config={"cleanup.policy": "compact", "delete.retention.ms": "1000"},
    )
    produced = produce_rounds(server, topic_name, tombstone_every=3)
    # Tombstones stay for a second after the first pass, then go with what they deleted.
    expected = [r for r in latest_per_key(produced) if r[2] is not None]
    wait_compacted(server, topic_name, expected)


def test_a_record_without_a_key_is_refused(server, topic_name):
    create_topic(server, topic_name, config={"cleanup.policy": "compact"})
    producer = ck_producer(server)
    reports = ck_produce_all(producer, topic_name, [{"value": b"no key"}])
    err, _ = reports[0]
    assert err is not None and err.code() == KafkaError.INVALID_RECORD, err
    # Nothing was stored: a keyed record takes offset 0.
    err, msg = ck_produce_all(producer, topic_name, [{"key": b"k", "value": b"v"}])[0]
    assert err is None and msg.offset() == 0
