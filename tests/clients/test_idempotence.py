"""Idempotent producer with injected retries writes no duplicates.

Every client of this module talks to the server through `FaultProxy`, a TCP proxy that
follows Kafka's framing in both directions and, when armed, kills the connection instead of
delivering the response to a Produce request: the server has stored the batch, the client
never hears of it, reconnects and sends the same batch again. The server is started with
`--advertised-kafka-addr <proxy>` so that clients stay on the proxy after bootstrap.

Each scenario also runs with idempotence off, where the same injection must produce
duplicates: that proves the retries really happen, so "no duplicates" with idempotence on is
the server's deduplication at work."""

import json
import logging
import socket
import struct
import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from conftest import Server
from shclient import (
    TopicPartition,
    ck_consume,
    ck_consumer,
    ck_produce_all,
    ck_producer,
    create_topic,
    kp_consumer,
    kp_producer,
    kp_read,
    stored_batches,
)

PRODUCE = 0
N = 200
# Which Produce responses the proxy drops: the first one (a producer's first batches) and two
# later ones, when several batches per partition are in flight.
DROP_AT = (0, 3, 6)


# ---------------------------------------------------------------- fault-injecting proxy


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _read_frame(sock):
    """One Kafka frame (without its 4-byte length prefix), or None at EOF/error."""
    try:
        head = _recv_exact(sock, 4)
        if head is None:
            return None
        return _recv_exact(sock, struct.unpack(">i", head)[0])
    except OSError:
        return None


class _Conn:
    def __init__(self, proxy, cid, client, upstream):
        self.proxy, self.cid, self.client, self.upstream = proxy, cid, client, upstream
        self.inflight = {}  # correlation id -> (api_key, api_version)
        self.lock = threading.Lock()
        self.closed = False

    def close(self):
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def client_to_server(self):
        try:
            while (frame := _read_frame(self.client)) is not None:
                api_key, api_version, corr = struct.unpack_from(">hhi", frame)
                # Registered before forwarding, so the response cannot overtake it.
                with self.lock:
                    self.inflight[corr] = (api_key, api_version)
                if api_key == PRODUCE:
                    self.proxy._count("produce_requests")
                self.upstream.sendall(struct.pack(">i", len(frame)) + frame)
        except OSError:
            pass
        finally:
            self.close()

    def server_to_client(self):
        try:
            while (frame := _read_frame(self.upstream)) is not None:
                (corr,) = struct.unpack_from(">i", frame)
                with self.lock:
                    api_key, api_version = self.inflight.pop(corr, (None, None))
                if api_key == PRODUCE and self.proxy._take_drop(self.cid, corr, api_version):
                    # What a network failure looks like: the response is lost and the
                    # connection dies (closing keeps the stream of frames consistent).
                    return
                self.client.sendall(struct.pack(">i", len(frame)) + frame)
        except OSError:
            pass
        finally:
            self.close()


class FaultProxy:
    """Listens on 127.0.0.1:<port>, forwards every connection to `upstream`. `arm(*ordinals)`
    makes it drop the Produce responses with those ordinals (0 = the first Produce response
    from the server after arming, retries' responses count too), each by closing that
    client's connection (and its upstream connection)."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.upstream = None
        self.lock = threading.Lock()
        self.conns = []
        self.arm()

    def start(self, upstream):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, *ordinals):
        with self.lock:
            self.drop_at = set(ordinals)
            self.dropped = []  # (ordinal, connection id, correlation id, produce version)
            self.produce_requests = 0
            self.produce_responses = 0

    def _count(self, what):
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)

    def _take_drop(self, cid, corr, version):
        with self.lock:
            ordinal = self.produce_responses
            self.produce_responses += 1
            if ordinal not in self.drop_at:
                return False
            self.dropped.append((ordinal, cid, corr, version))
            return True

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                conn = _Conn(self, len(self.conns), client, upstream)
                self.conns.append(conn)
            threading.Thread(target=conn.client_to_server, daemon=True).start()
            threading.Thread(target=conn.server_to_client, daemon=True).start()

    def stop(self):
        self.listener.close()
        for c in list(self.conns):
            c.close()


@pytest.fixture(scope="module")
def proxy():
    p = FaultProxy()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, proxy):
    """This module's server (overrides conftest's): it advertises the proxy's address."""
    root = tmp_path_factory.mktemp("streamhouse")
    srv = Server(root / "data", ["--advertised-kafka-addr", proxy.address])
    srv.start()
    proxy.start(srv.bootstrap)
    yield srv
    code = srv.stop()
    assert code == 0, (
        f"server exited with {code} after SIGTERM (expected 0); log tail:\n{srv.log_tail()}"
    )


@pytest.fixture(autouse=True)
def disarm(proxy):
    proxy.arm()
    yield
    proxy.arm()


def via(proxy):
    """A stand-in for `server` in the client factories: bootstrap through the proxy."""
    return SimpleNamespace(bootstrap=proxy.address)


def high_watermarks(server, topic, partitions):
    c = ck_consumer(server)
    try:
        return [
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        ]
    finally:
        c.close()


def assert_dropped_as_planned(proxy):
    assert [d[0] for d in proxy.dropped] == list(DROP_AT), (
        f"the proxy dropped Produce responses {proxy.dropped}, planned {DROP_AT} "
        f"({proxy.produce_responses} Produce responses seen)"
    )


# ---------------------------------------------------------------- confluent-kafka


def ck_produce_through_faults(server, proxy, topic, partitions, idempotent):
    create_topic(server, topic, partitions=partitions)
    stats = []
    conf = {
        "acks": "all",
        "enable.idempotence": idempotent,
        "linger.ms": 5,
        "batch.num.messages": 20,
        "message.timeout.ms": 30000,
        "statistics.interval.ms": 100,
        "stats_cb": stats.append,
    }
    if not idempotent:
        conf["retries"] = 5
    producer = ck_producer(via(proxy), **conf)
    sent = [{"value": b"rec-%04d" % i, "partition": i % partitions} for i in range(N)]
    proxy.arm(*DROP_AT)
    reports = ck_produce_all(producer, topic, sent, timeout=30)
    assert_dropped_as_planned(proxy)
    # Final statistics: librdkafka counts every record it transmits, retries included
    # (its per-broker `txretries` stays 0: a failed Produce's records are requeued, not the
    # request).
    deadline = time.monotonic() + 2
    seen = len(stats)
    while len(stats) <= seen and time.monotonic() < deadline:
        producer.poll(0.05)
    tp_stats = json.loads(stats[-1])["topics"][topic]["partitions"]
    retransmitted = sum(s["txmsgs"] for p, s in tp_stats.items() if p != "-1") - N
    return sent, reports, retransmitted


@pytest.mark.parametrize("partitions", [1, 3])
def test_confluent_idempotent_retries_write_no_duplicates(server, proxy, topic_name, partitions):
    sent, reports, retransmitted = ck_produce_through_faults(
        server, proxy, topic_name, partitions, idempotent=True
    )
    # The records of the dropped responses were really sent again.
    assert retransmitted > 0, "librdkafka retransmitted no record"
    assert [err for err, _ in reports] == [None] * N
    assert [m.value() for _, m in reports] == [r["value"] for r in sent]

    per_partition = [N // partitions + (p < N % partitions) for p in range(partitions)]
    assert high_watermarks(server, topic_name, partitions) == per_partition
    for p in range(partitions):
        expected = [r["value"] for r in sent if r["partition"] == p]
        got = ck_consume(server, topic_name, p, len(expected))
        # Each record once, in produce order, at offsets 0..n-1.
        assert [(m.offset(), m.value()) for m in got] == list(enumerate(expected))
        # Delivery reports name the offset each record is read back at.
        reported = sorted((m.offset(), m.value()) for _, m in reports if m.partition() == p)
        assert reported == list(enumerate(expected))
    assert sum(b["record_count"] for b in stored_batches(server.data_dir, topic_name)) == N


def test_confluent_non_idempotent_retries_write_duplicates(server, proxy, topic_name):
    """The control: the same injection without idempotence duplicates records."""
    partitions = 3
    sent, reports, retransmitted = ck_produce_through_faults(
        server, proxy, topic_name, partitions, idempotent=False
    )
    assert retransmitted > 0, "librdkafka retransmitted no record"
    assert [err for err, _ in reports] == [None] * N

    hwms = high_watermarks(server, topic_name, partitions)
    got = []
    for p in range(partitions):
        got += ck_consume(server, topic_name, p, hwms[p])
    counts = Counter(m.value() for m in got)
    assert set(counts) == {r["value"] for r in sent}, "a record was lost"
    duplicates = sum(hwms) - N
    assert duplicates > 0, "no duplicates: the injected failures caused no retry of stored data"
    assert sum(c - 1 for c in counts.values()) == duplicates


# ---------------------------------------------------------------- kafka-python


def kp_produce_through_faults(server, proxy, topic, idempotent, caplog):
    from kafka import TopicPartition as KpTopicPartition

    partitions = 3
    create_topic(server, topic, partitions=partitions)
    conf = {
        "enable_idempotence": idempotent,
        "acks": "all",
        "batch_size": 256,  # several batches per partition
        "linger_ms": 5,
    }
    if not idempotent:
        conf["retries"] = 5
    producer = kp_producer(via(proxy), **conf)
    try:
        # Metadata and (if idempotent) InitProducerId before the faults.
        producer.partitions_for(topic)
        sent = [(b"rec-%04d" % i, i % partitions) for i in range(N)]
        proxy.arm(*DROP_AT)
        with caplog.at_level(logging.WARNING, logger="kafka.producer.sender"):
            futures = [producer.send(topic, value=v, partition=p) for v, p in sent]
            producer.flush(30)
            metadata = [f.get(timeout=30) for f in futures]
    finally:
        producer.close(5)
    assert_dropped_as_planned(proxy)
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]

    hwms = high_watermarks(server, topic, partitions)
    got = {}
    consumer = kp_consumer(server)
    try:
        for p in range(partitions):
            tp = KpTopicPartition(topic, p)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            got[p] = kp_read(consumer, hwms[p])
    finally:
        consumer.close()
    return sent, metadata, retries, hwms, got


def test_kafka_python_idempotent_retries_write_no_duplicates(server, proxy, topic_name, caplog):
    sent, metadata, retries, hwms, got = kp_produce_through_faults(
        server, proxy, topic_name, idempotent=True, caplog=caplog
    )
    # kafka-python logs a warning for each batch it sends again.
    assert len(retries) >= len(DROP_AT), f"kafka-python logged {len(retries)} retries"
    assert hwms == [67, 67, 66]
    for p in range(3):
        expected = [v for v, q in sent if q == p]
        assert [(m.offset, m.value) for m in got[p]] == list(enumerate(expected))
    # Each record's metadata names where it is read back.
    assert [(md.partition, md.offset) for md in metadata] == [(i % 3, i // 3) for i in range(N)]


def test_kafka_python_non_idempotent_retries_write_duplicates(server, proxy, topic_name, caplog):
    """The control: the same injection without idempotence duplicates records."""
    sent, metadata, retries, hwms, got = kp_produce_through_faults(
        server, proxy, topic_name, idempotent=False, caplog=caplog
    )
    assert len(retries) >= len(DROP_AT), f"kafka-python logged {len(retries)} retries"
    counts = Counter(m.value for recs in got.values() for m in recs)
    assert set(counts) == {v for v, _ in sent}, "a record was lost"
    duplicates = sum(hwms) - N
    assert duplicates > 0, "no duplicates: the injected failures caused no retry of stored data"
    assert sum(c - 1 for c in counts.values()) == duplicates


# ---------------------------------------------------------------- InitProducerId


def test_producer_ids_distinct_across_producers_and_clients(server, proxy, topic_name):
    """Each idempotent producer gets its own id at epoch 0 (InitProducerId), and its batches
    carry sequences 0, 1, 2, … per partition; a non-idempotent producer's carry id -1."""
    create_topic(server, topic_name, partitions=2)
    for i in range(2):
        p = ck_producer(via(proxy), **{"enable.idempotence": True, "acks": "all"})
        ck_produce_all(
            p, topic_name, [{"value": b"ck%d-%d" % (i, j), "partition": j % 2} for j in range(10)]
        )
    kp = kp_producer(via(proxy), enable_idempotence=True, acks="all")
    for j in range(10):
        kp.send(topic_name, value=b"kp-%d" % j, partition=j % 2).get(timeout=20)
    kp.close(5)
    ck_produce_all(
        ck_producer(via(proxy), **{"enable.idempotence": False, "acks": "all"}),
        topic_name,
        [{"value": b"plain", "partition": 0}],
    )

    batches = stored_batches(server.data_dir, topic_name)
    assert sum(b["record_count"] for b in batches) == 31
    by_producer = {}
    for b in sorted(batches, key=lambda b: (b["partition"], b["base_offset"])):
        by_producer.setdefault(b["producer_id"], []).append(b)
    plain = by_producer.pop(-1)
    assert [(b["producer_epoch"], b["base_sequence"], b["record_count"]) for b in plain] == [
        (-1, -1, 1)
    ]
    assert len(by_producer) == 3, f"producer ids {sorted(by_producer)}"
    assert all(pid >= 0 for pid in by_producer)
    for pid, bs in by_producer.items():
        assert {b["producer_epoch"] for b in bs} == {0}, f"producer {pid}"
        for part in range(2):
            mine = [b for b in bs if b["partition"] == part]
            assert sum(b["record_count"] for b in mine) == 5, f"producer {pid} partition {part}"
            expected, seq = [], 0
            for b in mine:
                expected.append(seq)
                seq += b["record_count"]
            assert [b["base_sequence"] for b in mine] == expected, f"producer {pid}"
