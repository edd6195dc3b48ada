"""Consumer groups through both clients: assignment, rebalances on leave and on session
expiry, committed offsets and resuming after them, group administration, static members."""

import logging
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions

from shclient import (
    CK_GROUP_CONF,
    TopicPartition,
    ck_admin,
    ck_describe_group,
    ck_group_consumer,
    ck_member_assignments,
    ck_produce_all,
    ck_producer,
    ck_read,
    ck_settle,
    create_topic,
    kp_consumer,
    kp_read,
    raw_heartbeat,
)

# An empty group's first rebalance waits this long for more members (default 3000).
SERVER_ARGS = ["--group-initial-rebalance-delay-ms", "300"]


@pytest.fixture
def group_name(topic_name):
    return f"g-{topic_name}"


def all_partitions(topic, n):
    return [(topic, p) for p in range(n)]


def assert_partitioned(assignments, topic, n):
    """The member assignments are non-empty, disjoint and cover partitions 0..n-1."""
    assert all(assignments.values()), f"a member got no partitions: {assignments}"
    flat = [tp for tps in assignments.values() for tp in tps]
    assert sorted(flat) == all_partitions(topic, n), f"not disjoint or not covering: {assignments}"


def close_all(consumers):
    for c in consumers:
        try:
            c.close()
        except Exception:
            pass


# ---------------------------------------------------------------- confluent-kafka


def test_confluent_three_members_share_partitions(server, topic_name, group_name):
    create_topic(server, topic_name, partitions=6)
    admin = ck_admin(server)
    consumers = [
        ck_group_consumer(server, group_name, **{"client.id": f"member-{i}"}) for i in range(3)
    ]
    try:
        for c in consumers:
            c.subscribe([topic_name])
        desc = ck_settle(server, group_name, consumers, 3, admin=admin)

        local = {
            c.memberid(): sorted((tp.topic, tp.partition) for tp in c.assignment())
            for c in consumers
        }
        assert len(local) == 3
        assert_partitioned(local, topic_name, 6)
        assert sorted(len(v) for v in local.values()) == [2, 2, 2]

        assert desc.group_id == group_name
        assert desc.state == ConsumerGroupState.STABLE
        assert not desc.is_simple_consumer_group
        assert desc.partition_assignor in ("range", "roundrobin")
        assert ck_member_assignments(desc) == local
        assert sorted(m.client_id for m in desc.members) == ["member-0", "member-1", "member-2"]
        assert all(m.host for m in desc.members), [m.host for m in desc.members]
        assert desc.coordinator is not None and desc.coordinator.port == int(
            server.bootstrap.rsplit(":", 1)[1]
        )

        listing = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
        assert listing.errors == []
        ours = [g for g in listing.valid if g.group_id == group_name]
        assert len(ours) == 1, [g.group_id for g in listing.valid]
        assert ours[0].state == ConsumerGroupState.STABLE
        assert not ours[0].is_simple_consumer_group
        # The state filter (ListGroups v4): not listed among the Empty groups.
        empty = admin.list_consumer_groups(
            request_timeout=10, states={ConsumerGroupState.EMPTY}
        ).result(timeout=15)
        assert group_name not in [g.group_id for g in empty.valid]
    finally:
        close_all(consumers)


CHILD = textwrap.dedent(
    """
    import sys
    from confluent_kafka import Consumer
    bootstrap, group, topic, conf = sys.argv[1], sys.argv[2], sys.argv[3], eval(sys.argv[4])
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "client.id": "doomed", **conf})
    c.subscribe([topic])
    print("subscribed", flush=True)
    while True:
        m = c.poll(0.1)
        if m is not None and m.error():
            print("error", m.error(), flush=True)
    """
)


def test_confluent_rebalance_on_leave_and_on_death(server, topic_name, group_name):
    create_topic(server, topic_name, partitions=6)
    admin = ck_admin(server)
    # Two members here, one (to be killed) in a child process, one that leaves.
    a, b, leaver = (ck_group_consumer(server, group_name) for _ in range(3))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, server.bootstrap, group_name, topic_name, repr(CK_GROUP_CONF)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for c in (a, b, leaver):
            c.subscribe([topic_name])
        desc = ck_settle(server, group_name, [a, b, leaver], 4, admin=admin)
        assert_partitioned(ck_member_assignments(desc), topic_name, 6)
        (child_id,) = [m.member_id for m in desc.members if m.client_id == "doomed"]

        # One member leaves (close() sends LeaveGroup): three members share the six.
        leaver.close()
        leaver = None
        desc = ck_settle(server, group_name, [a, b], 3, admin=admin)
        assignments = ck_member_assignments(desc)
        assert set(assignments) == {a.memberid(), b.memberid(), child_id}
        assert_partitioned(assignments, topic_name, 6)

        # One member dies: no LeaveGroup, no heartbeats. After its session timeout (6 s)
        # the two others take its partitions over.
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        killed_at = time.monotonic()
        desc = ck_settle(server, group_name, [a, b], 2, timeout=20, admin=admin)
        took = time.monotonic() - killed_at
        assignments = ck_member_assignments(desc)
        assert set(assignments) == {a.memberid(), b.memberid()}
        assert_partitioned(assignments, topic_name, 6)
        assert sorted(len(v) for v in assignments.values()) == [3, 3]
        # Removed by session expiry, not earlier (the last heartbeat was ≤ 0.5 s before).
        assert took >= 5.0, f"dead member removed after {took:.1f}s, before its session timeout"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        close_all([c for c in (a, b, leaver) if c is not None])


def test_confluent_resume_after_committed_offsets(server, topic_name, group_name):
    create_topic(server, topic_name, partitions=2)
    producer = ck_producer(server, acks="all")

    def produce(start, end):
        ck_produce_all(
            producer,
            topic_name,
            [{"value": b"p%d-%d" % (p, i), "partition": p} for p in (0, 1) for i in range(start, end)],
        )

    produce(0, 10)  # offsets 0..9 in both partitions
    c = ck_group_consumer(server, group_name)
    try:
        c.subscribe([topic_name])
        got = ck_read(c, 20)
        assert sorted((m.partition(), m.offset()) for m in got) == [
            (p, o) for p in (0, 1) for o in range(10)
        ]
        # Processed up to 4 in partition 0 and up to 6 in partition 1: commit the next offsets.
        result = c.commit(
            offsets=[
                TopicPartition(topic_name, 0, 5, metadata="first"),
                TopicPartition(topic_name, 1, 7),
            ],
            asynchronous=False,
        )
        assert sorted((tp.partition, tp.offset, tp.error) for tp in result) == [
            (0, 5, None),
            (1, 7, None),
        ]
        committed = c.committed([TopicPartition(topic_name, p) for p in (0, 1)], timeout=10)
        assert [(tp.partition, tp.offset, tp.error) for tp in committed] == [
            (0, 5, None),
            (1, 7, None),
        ]
        assert committed[0].metadata == "first"
    finally:
        c.close()

    produce(10, 13)  # offsets 10..12 in both partitions

    admin = ck_admin(server)
    (res,) = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group_name)], request_timeout=10
    ).values()
    offsets = res.result(timeout=15)
    assert offsets.group_id == group_name
    assert sorted((tp.topic, tp.partition, tp.offset) for tp in offsets.topic_partitions) == [
        (topic_name, 0, 5),
        (topic_name, 1, 7),
    ]
    desc = ck_describe_group(server, group_name, admin)
    assert desc.state == ConsumerGroupState.EMPTY
    assert desc.members == []

    # A new member of the group resumes at the committed offsets: no record skipped, none
    # of the committed ones delivered again (auto.offset.reset=earliest would start at 0).
    c = ck_group_consumer(server, group_name)
    try:
        c.subscribe([topic_name])
        got = ck_read(c, 8 + 6)
        assert sorted((m.partition(), m.offset(), m.value()) for m in got) == [
            (p, o, b"p%d-%d" % (p, o)) for p, start in ((0, 5), (1, 7)) for o in range(start, 13)
        ]
        extra = c.poll(1.0)
        assert extra is None, f"unexpected record after the end: {extra and extra.offset()}"
    finally:
        c.close()


def test_confluent_static_member_gets_its_partitions_back(server, topic_name, group_name):
    create_topic(server, topic_name, partitions=4)
    admin = ck_admin(server)

    fatal = {}  # client.id -> fatal errors, from poll(), error_cb or librdkafka's FATAL log

    class FatalLog(logging.Handler):
        def __init__(self, name):
            super().__init__()
            self.client = name

        def emit(self, record):
            if "FATAL" in record.getMessage():
                fatal.setdefault(self.client, []).append(record.getMessage())

    def static(instance, name):
        def on_error(err):
            if err.fatal():
                fatal.setdefault(name, []).append(err.str())

        logger = logging.getLogger(f"{group_name}.{name}")
        logger.addHandler(FatalLog(name))
        return ck_group_consumer(
            server,
            group_name,
            **{
                "group.instance.id": instance,
                "client.id": name,
                "error_cb": on_error,
                "logger": logger,
            },
        )

    a, b = static("inst-a", "a"), static("inst-b", "b")
    a2 = a3 = None
    try:
        for c in (a, b):
            c.subscribe([topic_name])
        desc = ck_settle(server, group_name, [a, b], 2, admin=admin)
        assert sorted(m.group_instance_id for m in desc.members) == ["inst-a", "inst-b"]
        by_instance = {m.group_instance_id: m for m in desc.members}
        a_parts = sorted((tp.topic, tp.partition) for tp in a.assignment())
        b_parts = sorted((tp.topic, tp.partition) for tp in b.assignment())
        assert_partitioned({"a": a_parts, "b": b_parts}, topic_name, 4)
        old_a_id = a.memberid()
        assert by_instance["inst-a"].member_id == old_a_id

        # A static member's close() sends no LeaveGroup: the member stays until its session
        # expires, so the group keeps both members…
        a.close()
        a = None
        desc = ck_describe_group(server, group_name, admin)
        assert sorted(m.member_id for m in desc.members) == sorted([old_a_id, b.memberid()])

        # …and the same instance, restarted, replaces it and gets its partitions back.
        a2 = static("inst-a", "a2")
        a2.subscribe([topic_name])
        desc = ck_settle(server, group_name, [a2, b], 2, admin=admin)
        by_instance = {m.group_instance_id: m for m in desc.members}
        assert sorted(by_instance) == ["inst-a", "inst-b"]
        assert by_instance["inst-a"].member_id == a2.memberid() != old_a_id
        assert sorted((tp.topic, tp.partition) for tp in a2.assignment()) == a_parts
        assert sorted((tp.topic, tp.partition) for tp in b.assignment()) == b_parts
        # The replaced incarnation is fenced: a heartbeat with its member id and the
        # instance id gets FENCED_INSTANCE_ID (82), not UNKNOWN_MEMBER_ID (25), which would
        # make it rejoin and fence the new incarnation in turn.
        assert raw_heartbeat(server, group_name, 1, old_a_id, "inst-a") == 82
        # A member id with another member's instance id is fenced too.
        assert raw_heartbeat(server, group_name, 1, b.memberid(), "inst-a") == 82

        # A second live incarnation of inst-a fences the running one: a2 gets a fatal
        # FENCED_INSTANCE_ID on its next heartbeat and stops; a3 takes over, and is not
        # fenced in turn. (librdkafka 2.16 surfaces a fatal error as a _FATAL poll() result,
        # through error_cb, or, for a consumer fenced in its JoinGroup, only in its log.)
        a3 = static("inst-a", "a3")
        a3.subscribe([topic_name])
        consumers = {"a2": a2, "a3": a3, "b": b}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not fatal:
            for name, c in consumers.items():
                msg = c.poll(0.05)
                if msg is not None and msg.error() is not None and msg.error().fatal():
                    fatal.setdefault(name, []).append(msg.error().str())
        for c in consumers.values():  # serve any further error or log callbacks
            c.poll(0.2)
        assert list(fatal) == ["a2"], f"expected only a2 to be fenced; fatal errors: {fatal}"
        assert "fenced" in fatal["a2"][0].lower(), fatal
        desc = ck_settle(server, group_name, [a3, b], 2, admin=admin)
        by_instance = {m.group_instance_id: m for m in desc.members}
        assert by_instance["inst-a"].member_id == a3.memberid() != a2.memberid()
        assert sorted((tp.topic, tp.partition) for tp in a3.assignment()) == a_parts
        assert list(fatal) == ["a2"], fatal
    finally:
        close_all([c for c in (a, a2, a3, b) if c is not None])


# ---------------------------------------------------------------- kafka-python


def kp_group_consumer(server, group, name):
    return kp_consumer(
        server,
        group_id=group,
        client_id=name,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        auto_offset_reset="earliest",
    )


class KpMember(threading.Thread):
    """A kafka-python group consumer polling in its own thread (members of one group must
    poll concurrently to rejoin, and a poll() that times out while its JoinGroup/SyncGroup
    is in flight makes kafka-python 3.0.12 drop the finished join and join again, so
    polls here are long). Other calls run in this thread too, through `call`."""

    def __init__(self, server, group, name, topic):
        super().__init__(daemon=True, name=name)
        self.consumer = kp_group_consumer(server, group, name)
        self.consumer.subscribe([topic])
        self.records = []
        self.failure = None
        self._calls = queue.Queue()
        self._halt = threading.Event()
        self.start()

    def run(self):
        try:
            while not self._halt.is_set():
                for recs in self.consumer.poll(timeout_ms=300).values():
                    self.records.extend(recs)
                while not self._calls.empty():
                    fn, done = self._calls.get()
                    try:
                        done.append((True, fn(self.consumer)))
                    except Exception as e:  # handed to the caller
                        done.append((False, e))
        except Exception as e:
            self.failure = e

    def call(self, fn, timeout=15):
        done = []
        self._calls.put((fn, done))
        deadline = time.monotonic() + timeout
        while not done and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.01)
        assert done, f"{self.name}: call not served (failure: {self.failure})"
        ok, value = done[0]
        if not ok:
            raise value
        return value

    def assignment(self):
        return sorted((tp.topic, tp.partition) for tp in self.call(lambda c: c.assignment()))

    def close(self):
        if self._halt.is_set():
            return
        self._halt.set()
        self.join(10)
        self.consumer.close()
        assert self.failure is None, f"{self.name} failed: {self.failure!r}"


def test_kafka_python_group_commit_resume_and_admin(server, topic_name, group_name):
    from kafka import KafkaAdminClient, OffsetAndMetadata
    from kafka import TopicPartition as KTP

    create_topic(server, topic_name, partitions=4)
    admin = KafkaAdminClient(bootstrap_servers=server.bootstrap, request_timeout_ms=15000)
    m1 = KpMember(server, group_name, "kp-1", topic_name)
    m2 = KpMember(server, group_name, "kp-2", topic_name)
    members = {"kp-1": m1, "kp-2": m2}
    c3 = None
    try:

        def described():
            g = admin.describe_groups([group_name])[group_name]
            return g, {
                m["client_id"]: sorted(
                    (t["topic"], p)
                    for t in m["member_assignment"]["assigned_partitions"]
                    for p in t["partitions"]
                )
                for m in g["members"]
                if m["member_assignment"]
            }

        def local():
            return {name: m.assignment() for name, m in members.items()}

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            group, by_client = described()
            if group["group_state"] == "Stable" and by_client == local():
                break
            time.sleep(0.1)
        group, by_client = described()
        assert group["error"] is None
        assert group["group_state"] == "Stable"
        assert group["protocol_type"] == "consumer"
        assert group["protocol_data"] in ("range", "roundrobin", "sticky"), group["protocol_data"]
        assert sorted(m["client_id"] for m in group["members"]) == ["kp-1", "kp-2"]
        assert by_client == local()
        assert_partitioned(by_client, topic_name, 4)
        assert m1.records == m2.records == []

        # Each member reads exactly the records of its own partitions.
        producer = ck_producer(server, acks="all")
        ck_produce_all(
            producer,
            topic_name,
            [{"value": b"%d-%d" % (p, i), "partition": p} for p in range(4) for i in range(6)],
        )
        deadline = time.monotonic() + 20
        while len(m1.records) + len(m2.records) < 24 and time.monotonic() < deadline:
            time.sleep(0.05)
        for name, m in members.items():
            assert sorted((r.topic, r.partition, r.offset) for r in m.records) == [
                (t, p, o) for (t, p) in by_client[name] for o in range(6)
            ], f"{name} read the wrong records"

        # Each commits offset 4 (with metadata) of its partitions, synchronously.
        for name, m in members.items():
            offsets = {KTP(t, p): OffsetAndMetadata(4, f"by-{name}", -1) for t, p in by_client[name]}
            m.call(lambda c, o=offsets: c.commit(o))
        for name, m in members.items():
            for t, p in by_client[name]:
                assert m.call(lambda c, tp=KTP(t, p): c.committed(tp)) == 4
        offsets = admin.list_group_offsets(group_name)[group_name]
        assert {(tp.topic, tp.partition): (o.offset, o.metadata) for tp, o in offsets.items()} == {
            (t, p): (4, f"by-{name}") for name, tps in by_client.items() for t, p in tps
        }

        listed = {g["group_id"]: g for g in admin.list_groups()}
        assert group_name in listed
        assert listed[group_name]["protocol_type"] == "consumer"
        assert listed[group_name].get("group_state", "Stable") == "Stable"

        # A group with members cannot be deleted.
        assert admin.delete_groups([group_name]) == {group_name: "NonEmptyGroupError"}

        m1.close()
        m2.close()
        members = {}
        group, _ = described()
        assert (group["group_state"], group["members"]) == ("Empty", [])

        # More records; a new member resumes at the committed offsets: 4, 5 and the new 6, 7.
        ck_produce_all(
            producer,
            topic_name,
            [{"value": b"%d-%d" % (p, i), "partition": p} for p in range(4) for i in range(6, 8)],
        )
        c3 = kp_group_consumer(server, group_name, "kp-3")
        c3.subscribe([topic_name])
        recs = kp_read(c3, 16, timeout=20)
        assert sorted((r.partition, r.offset, r.value) for r in recs) == [
            (p, o, b"%d-%d" % (p, o)) for p in range(4) for o in range(4, 8)
        ]
        assert c3.poll(timeout_ms=1000) == {}
        c3.close()
        c3 = None

        # Without members it can be deleted, and its offsets go with it.
        assert admin.delete_groups([group_name]) == {group_name: "OK"}
        assert admin.list_group_offsets(group_name) == {group_name: {}}
        assert group_name not in [g["group_id"] for g in admin.list_groups()]
        group, _ = described()
        assert (group["group_state"], group["members"]) == ("Dead", [])
        assert admin.delete_groups([group_name]) == {group_name: "GroupIdNotFoundError"}
    finally:
        for m in members.values():
            m.close()
        if c3 is not None:
            c3.close()
        admin.close()
