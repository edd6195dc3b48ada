"""Metadata and topic administration through both clients' admin APIs."""

import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from shclient import ck_admin


def wait_until(predicate, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_confluent_admin_topic_lifecycle(server, topic_name):
    admin = ck_admin(server)

    fs = admin.create_topics([NewTopic(topic_name, num_partitions=3, replication_factor=1)])
    assert fs[topic_name].result(timeout=20) is None

    md = admin.list_topics(timeout=10)
    assert topic_name in md.topics
    tmd = md.topics[topic_name]
    assert tmd.error is None
    assert sorted(tmd.partitions) == [0, 1, 2]
    for p in tmd.partitions.values():
        assert p.error is None
        assert p.leader in md.brokers, f"partition {p.id} leader {p.leader} is no listed broker"
    # Metadata for just this topic, too.
    one = admin.list_topics(topic=topic_name, timeout=10)
    assert sorted(one.topics[topic_name].partitions) == [0, 1, 2]
    # The broker the server lists is the address we connected to.
    assert [f"{b.host}:{b.port}" for b in md.brokers.values()] == [server.advertised]

    fs = admin.create_topics([NewTopic(topic_name, num_partitions=3, replication_factor=1)])
    with pytest.raises(KafkaException) as exc:
        fs[topic_name].result(timeout=20)
    assert exc.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

    fs = admin.create_topics([NewTopic("bad name", num_partitions=1, replication_factor=1)])
    with pytest.raises(KafkaException) as exc:
        fs["bad name"].result(timeout=20)
    assert exc.value.args[0].code() == KafkaError.TOPIC_EXCEPTION  # INVALID_TOPIC_EXCEPTION, 17
    assert "bad name" not in admin.list_topics(timeout=10).topics

    fs = admin.delete_topics([topic_name], operation_timeout=10)
    assert fs[topic_name].result(timeout=20) is None
    wait_until(
        lambda: topic_name not in admin.list_topics(timeout=10).topics,
        what=f"{topic_name} to disappear from metadata",
    )
    # Deleting it again: unknown topic.
    fs = admin.delete_topics([topic_name], operation_timeout=10)
    with pytest.raises(KafkaException) as exc:
        fs[topic_name].result(timeout=20)
    assert exc.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_kafka_python_admin_topic_lifecycle(server, topic_name):
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic as KpNewTopic
    from kafka.errors import InvalidTopicError, TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=server.bootstrap, request_timeout_ms=15000)
    try:
        res = admin.create_topics([KpNewTopic(topic_name, 3, 1)])
        assert [(t["name"], t["error_code"]) for t in res["topics"]] == [(topic_name, 0)]

        assert topic_name in admin.list_topics()
        (desc,) = admin.describe_topics([topic_name])
        assert desc["name"] == topic_name
        assert desc["error_code"] == 0
        assert sorted(p["partition_index"] for p in desc["partitions"]) == [0, 1, 2]
        assert all(p["error_code"] == 0 for p in desc["partitions"])

        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics([KpNewTopic(topic_name, 3, 1)])
        with pytest.raises(InvalidTopicError):
            admin.create_topics([KpNewTopic("bad name", 1, 1)])
        assert "bad name" not in admin.list_topics()

        res = admin.delete_topics([topic_name])
        assert [(t["name"], t["error_code"]) for t in res["topics"]] == [(topic_name, 0)]
        wait_until(lambda: topic_name not in admin.list_topics(), what="topic deletion")
    finally:
        admin.close()
