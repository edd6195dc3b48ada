"""Helpers shared by the client conformance tests: client factories with the settings our
server needs today, a Java-compatible murmur2, and a reader of the stored objects."""

import struct
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# Codec ids in the low 3 bits of a RecordBatch's attributes.
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


# ---------------------------------------------------------------- confluent-kafka


def ck_admin(server):
    return AdminClient({"bootstrap.servers": server.bootstrap})


def create_topic(server, name, partitions=1, config=None):
    """Creates a topic with confluent-kafka's AdminClient and waits for it."""
    admin = ck_admin(server)  # keep a reference: a collected client cancels its futures
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10,
        request_timeout=15,
    )
    futures[name].result(timeout=20)
    return name


def ck_producer(server, **extra):
    conf = {
        "bootstrap.servers": server.bootstrap,
        "linger.ms": 5,
        "message.timeout.ms": 20000,
    }
    conf.update(extra)
    return Producer(conf)


def ck_consumer(server, **extra):
    # confluent-kafka insists on a group.id, but these consumers never subscribe or commit:
    # they use assign() with explicit offsets (consumer groups are not served yet).
    conf = {
        "bootstrap.servers": server.bootstrap,
        "group.id": "unused-assign-only",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 100,
    }
    conf.update(extra)
    return Consumer(conf)


def ck_produce_all(producer, topic, records, timeout=30):
    """Produces dicts with keys value/key/partition/headers/timestamp; returns delivery reports
    as (err, msg) in produce order, after flushing."""
    reports = [None] * len(records)

    def cb_for(i):
        def cb(err, msg):
            reports[i] = (err, msg)

        return cb

    for i, r in enumerate(records):
        kwargs = {k: v for k, v in r.items() if v is not None}
        while True:
            try:
                producer.produce(topic, on_delivery=cb_for(i), **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after {timeout}s"
    assert all(r is not None for r in reports), "a delivery report is missing"
    return reports


def ck_consume(server, topic, partition, count, start=0, timeout=20, **extra):
    """Reads `count` records of one partition from offset `start` using assign()."""
    c = ck_consumer(server, **extra)
    try:
        c.assign([TopicPartition(topic, partition, start)])
        return ck_read(c, count, timeout)
    finally:
        c.close()


def ck_read(consumer, count, timeout=20):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            raise AssertionError(f"consumer error: {msg.error()}")
        out.append(msg)
    assert len(out) == count, f"read {len(out)} of {count} records within {timeout}s"
    return out


def ck_error_code(err):
    return err.code() if err is not None else None


# Group settings that keep group tests quick: the server's minimum session timeout (6 s) and
# frequent heartbeats, so that members hear of a rebalance within half a second.
CK_GROUP_CONF = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "auto.offset.reset": "earliest",
}


def ck_group_consumer(server, group, **extra):
    """A confluent-kafka consumer of consumer group `group` (for subscribe()); no auto-commit."""
    conf = {"group.id": group, **CK_GROUP_CONF}
    conf.update(extra)
    return ck_consumer(server, **conf)


def ck_describe_group(server, group, admin=None):
    """AdminClient.describe_consumer_groups for one group: its ConsumerGroupDescription."""
    admin = admin or ck_admin(server)
    return admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)


def ck_member_assignments(description):
    """{member_id: sorted [(topic, partition)]} of a ConsumerGroupDescription."""
    return {
        m.member_id: sorted((tp.topic, tp.partition) for tp in m.assignment.topic_partitions)
        for m in description.members
    }


def ck_settle(server, group, consumers, members, timeout=30, admin=None):
    """Polls `consumers` (confluent-kafka, subscribed to an empty topic) until the group is
    Stable with `members` members and each consumer's own assignment is the one the
    coordinator reports for its member id. Returns the ConsumerGroupDescription. Records
    or errors polled meanwhile fail the caller."""
    from confluent_kafka import ConsumerGroupState

    admin = admin or ck_admin(server)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for c in consumers:
            msg = c.poll(0.05)
            if msg is not None:
                raise AssertionError(
                    f"unexpected {'error ' + str(msg.error()) if msg.error() else 'record'} "
                    "while settling"
                )
        last = ck_describe_group(server, group, admin)
        if last.state != ConsumerGroupState.STABLE or len(last.members) != members:
            continue
        by_member = ck_member_assignments(last)
        if all(
            by_member.get(c.memberid())
            == sorted((tp.topic, tp.partition) for tp in c.assignment())
            for c in consumers
        ):
            return last
    raise AssertionError(
        f"group {group} did not settle with {members} members within {timeout}s; last "
        f"description: state {last and last.state}, members "
        f"{last and ck_member_assignments(last)}, local "
        f"{[(c.memberid(), sorted(tp.partition for tp in c.assignment())) for c in consumers]}"
    )


def raw_heartbeat(server, group, generation, member_id, instance_id=None, timeout=10):
    """Sends one Heartbeat v3 by hand (what a stale client would send) and returns its
    error code."""
    import socket

    def string(s):
        b = s.encode()
        return struct.pack(">h", len(b)) + b

    body = (
        string(group)
        + struct.pack(">i", generation)
        + string(member_id)
        + (struct.pack(">h", -1) if instance_id is None else string(instance_id))
    )
    header = struct.pack(">hhi", 12, 3, 7) + string("raw-heartbeat")
    host, port = server.bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">i", data[:4])[0]:
            chunk = sock.recv(4096)
            assert chunk, "connection closed before the Heartbeat response"
            data += chunk
    correlation, _throttle, error_code = struct.unpack(">iih", data[4:14])
    assert correlation == 7
    return error_code


# ---------------------------------------------------------------- kafka-python


def kp_producer(server, **extra):
    from kafka import KafkaProducer

    conf = {
        "bootstrap_servers": server.bootstrap,
        # kafka-python 3.x enables idempotence by default, which needs InitProducerId; the
        # idempotent producer is not served yet (it gets its own tests later).
        "enable_idempotence": False,
        "linger_ms": 5,
        "request_timeout_ms": 15000,
    }
    conf.update(extra)
    return KafkaProducer(**conf)


def kp_consumer(server, **extra):
    from kafka import KafkaConsumer

    conf = {
        "bootstrap_servers": server.bootstrap,
        "group_id": None,
        "enable_auto_commit": False,
        "fetch_max_wait_ms": 100,
        "request_timeout_ms": 30000,
    }
    conf.update(extra)
    return KafkaConsumer(**conf)


def kp_read(consumer, count, timeout=20):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=200).values():
            out.extend(recs)
    assert len(out) == count, f"read {len(out)} of {count} records within {timeout}s"
    return out


# ---------------------------------------------------------------- murmur2 (Java's)


def murmur2(data: bytes) -> int:
    """org.apache.kafka.common.utils.Utils.murmur2, as a signed 32-bit int."""
    length = len(data)
    m = 0x5BD1E995
    r = 24
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length & ~3
    extra = length % 4
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h >= (1 << 31) else h


def java_partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# ---------------------------------------------------------------- stored objects


def stored_batches(data_dir: Path, topic: str):
    """Every RecordBatch stored for `topic`, from the footers of the objects under
    <data-dir>/objects/data (docs/storage-format.md): list of dicts with partition,
    base_offset, attributes, record_count, producer_id, producer_epoch, base_sequence."""
    out = []
    for path in sorted((Path(data_dir) / "objects" / "data").rglob("*.sho")):
        obj = path.read_bytes()
        assert obj[-4:] == b"SHO1", f"{path} lacks the SHO1 trailer"
        footer_len = struct.unpack(">I", obj[-12:-8])[0]
        footer = obj[len(obj) - 12 - footer_len : len(obj) - 12]
        pos = 0
        while pos < len(footer):
            (tlen,) = struct.unpack_from(">H", footer, pos)
            name = footer[pos + 2 : pos + 2 + tlen].decode()
            pos += 2 + tlen
            partition, base, end, start, blen, _maxts = struct.unpack_from(
                ">iqqQQq", footer, pos
            )
            pos += 44
            if name != topic:
                continue
            chunk = obj[start : start + blen]
            off = 0
            while off < len(chunk):
                base_offset, batch_len = struct.unpack_from(">qi", chunk, off)
                (attributes,) = struct.unpack_from(">h", chunk, off + 21)
                (record_count,) = struct.unpack_from(">i", chunk, off + 57)
                producer_id, producer_epoch, base_sequence = struct.unpack_from(
                    ">qhi", chunk, off + 43
                )
                out.append(
                    {
                        "partition": partition,
                        "base_offset": base_offset,
                        "attributes": attributes,
                        "record_count": record_count,
                        "producer_id": producer_id,
                        "producer_epoch": producer_epoch,
                        "base_sequence": base_sequence,
                        "object": path.name,
                    }
                )
                off += 12 + batch_len
            assert off == len(chunk), f"chunk of {name}/{partition} in {path} is not whole batches"
    return out


__all__ = [
    "CODEC_IDS",
    "KafkaError",
    "TopicPartition",
    "ck_admin",
    "ck_consume",
    "ck_consumer",
    "ck_describe_group",
    "ck_error_code",
    "ck_group_consumer",
    "ck_member_assignments",
    "ck_settle",
    "ck_produce_all",
    "ck_producer",
    "ck_read",
    "create_topic",
    "java_partition",
    "kp_consumer",
    "kp_producer",
    "kp_read",
    "murmur2",
    "raw_heartbeat",
    "stored_batches",
]
