"""Offsets: contiguous under concurrent producers, ListOffsets (earliest, latest, by time)
and seeking."""

import threading

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

from shclient import (
    TopicPartition,
    ck_consume,
    ck_consumer,
    ck_produce_all,
    ck_producer,
    ck_read,
    create_topic,
    kp_consumer,
    kp_read,
)


def test_offsets_contiguous_with_concurrent_producers(server, topic_name):
    partitions, per_producer = 3, 1000
    create_topic(server, topic_name, partitions=partitions)
    results = {}

    def run(pid):
        producer = ck_producer(server, acks="all", **{"linger.ms": 1, "batch.num.messages": 50})
        recs = [
            {"value": f"p{pid}-{i}".encode(), "partition": (i + pid) % partitions}
            for i in range(per_producer)
        ]
        results[pid] = ck_produce_all(producer, topic_name, recs, timeout=60)

    threads = [threading.Thread(target=run, args=(pid,)) for pid in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert sorted(results) == [0, 1]

    by_partition = {p: {} for p in range(partitions)}
    for reports in results.values():
        for err, msg in reports:
            assert err is None, err
            offsets = by_partition[msg.partition()]
            assert msg.offset() not in offsets, f"offset {msg.offset()} delivered twice"
            offsets[msg.offset()] = msg.value()
    assert sum(len(o) for o in by_partition.values()) == 2 * per_producer
    for p, offsets in by_partition.items():
        n = len(offsets)
        assert sorted(offsets) == list(range(n)), f"partition {p}: offsets not exactly 0..{n - 1}"
        got = ck_consume(server, topic_name, p, n, timeout=30)
        assert [(m.offset(), m.value()) for m in got] == sorted(offsets.items())
        # Each producer's records stay in its own send order within the partition.
        for pid in range(2):
            seq = [int(v.split(b"-")[1]) for v in offsets.values() if v.startswith(b"p%d-" % pid)]
            seq_by_offset = [
                int(m.value().split(b"-")[1]) for m in got if m.value().startswith(b"p%d-" % pid)
            ]
            assert seq_by_offset == sorted(seq)


TIMESTAMPS = [1000 * (i + 1) for i in range(10)]  # 1000, 2000, ..., 10000


def produce_timed(server, topic):
    create_topic(server, topic, partitions=1)
    # Two batches at least (linger 0 + a flush in between), to cross index entries.
    producer = ck_producer(server, acks="all", **{"linger.ms": 0})
    ck_produce_all(
        producer, topic, [{"value": b"t%d" % t, "timestamp": t, "partition": 0} for t in TIMESTAMPS[:4]]
    )
    ck_produce_all(
        producer, topic, [{"value": b"t%d" % t, "timestamp": t, "partition": 0} for t in TIMESTAMPS[4:]]
    )


def test_confluent_list_offsets(server, topic_name):
    produce_timed(server, topic_name)
    c = ck_consumer(server)
    try:
        assert c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10) == (0, 10)

        def at(ts):
            (tp,) = c.offsets_for_times([TopicPartition(topic_name, 0, ts)], timeout=10)
            assert tp.error is None
            return tp.offset

        assert at(OFFSET_BEGINNING) == 0  # -2: earliest
        assert at(OFFSET_END) == 10  # -1: latest
        assert at(0) == 0
        assert at(1000) == 0
        assert at(2000) == 1
        assert at(2500) == 2  # first record with timestamp >= 2500 is 3000, at offset 2
        assert at(4500) == 4  # crosses into the second batch
        assert at(10000) == 9
        assert at(10001) == -1  # later than every record: no offset
    finally:
        c.close()


def test_kafka_python_list_offsets(server, topic_name):
    from kafka import TopicPartition as KpTopicPartition

    produce_timed(server, topic_name)
    c = kp_consumer(server)
    try:
        tp = KpTopicPartition(topic_name, 0)
        assert c.beginning_offsets([tp]) == {tp: 0}
        assert c.end_offsets([tp]) == {tp: 10}
        res = c.offsets_for_times({tp: 2500})[tp]
        assert (res.offset, res.timestamp) == (2, 3000)
        res = c.offsets_for_times({tp: 2000})[tp]
        assert (res.offset, res.timestamp) == (1, 2000)
        res = c.offsets_for_times({tp: 4500})[tp]
        assert (res.offset, res.timestamp) == (4, 5000)
        assert c.offsets_for_times({tp: 10001})[tp] is None
    finally:
        c.close()


def test_confluent_seek(server, topic_name):
    create_topic(server, topic_name, partitions=1)
    producer = ck_producer(server, acks="all")
    ck_produce_all(producer, topic_name, [{"value": b"v%d" % i, "partition": 0} for i in range(20)])
    c = ck_consumer(server)
    try:
        c.assign([TopicPartition(topic_name, 0, 0)])
        assert [m.offset() for m in ck_read(c, 8)] == list(range(8))
        c.seek(TopicPartition(topic_name, 0, 5))
        got = ck_read(c, 3)
        assert [(m.offset(), m.value()) for m in got] == [(5, b"v5"), (6, b"v6"), (7, b"v7")]
        c.seek(TopicPartition(topic_name, 0, OFFSET_END))
        assert c.poll(1.0) is None  # nothing beyond the end
        ck_produce_all(producer, topic_name, [{"value": b"after-end", "partition": 0}])
        (m,) = ck_read(c, 1)
        assert (m.offset(), m.value()) == (20, b"after-end")
        assert c.position([TopicPartition(topic_name, 0)])[0].offset == 21
    finally:
        c.close()


def test_kafka_python_seek(server, topic_name):
    from kafka import TopicPartition as KpTopicPartition

    create_topic(server, topic_name, partitions=1)
    producer = ck_producer(server, acks="all")
    ck_produce_all(producer, topic_name, [{"value": b"v%d" % i, "partition": 0} for i in range(20)])
    c = kp_consumer(server, max_poll_records=8)
    try:
        tp = KpTopicPartition(topic_name, 0)
        c.assign([tp])
        c.seek(tp, 0)
        assert [m.offset for m in kp_read(c, 8)] == list(range(8))
        c.seek(tp, 5)
        got = kp_read(c, 8)
        assert [(m.offset, m.value) for m in got][:3] == [(5, b"v5"), (6, b"v6"), (7, b"v7")]
        assert [m.offset for m in got] == list(range(5, 13))
        c.seek_to_end(tp)
        assert c.position(tp) == 20
        assert c.poll(timeout_ms=500) == {}
        ck_produce_all(producer, topic_name, [{"value": b"after-end", "partition": 0}])
        (m,) = kp_read(c, 1)
        assert (m.offset, m.value) == (20, b"after-end")
    finally:
        c.close()
