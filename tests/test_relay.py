"""A publisher on a real broker that Kafka refuses an update for good (relay.PublishRefused):
it stops, exits EXIT_REFUSED with nothing committed past the update, and a restart sends that
update again (its supervisor restarts it: autorestart, tests/test_supervision.py)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from kafka import TopicPartition
from kafka.admin import NewTopic

from emojistream import config
from emojistream.common import kafka_clients
from emojistream.relay.main import EXIT_REFUSED
from tests.services import running, wait_until

pytestmark = pytest.mark.kafka


def update(second: int) -> bytes:
    return json.dumps({"window_start": f"2026-11-27T07:00:{second:02d}.000Z",
                       "window_end": f"2026-11-27T07:00:{second + 2:02d}.000Z",
                       "aggregates": [{"emoji_type": "🔥", "count": 1, "normalized_count": 0,
                                       "unique_users": 1}]},
                      ensure_ascii=False).encode()


def committed(settings, group: str, topic: str) -> int | None:
    reader = kafka_clients.consumer(settings, group_id=group, enable_auto_commit=False)
    try:  # reads the group's offsets without joining it
        return reader.committed(TopicPartition(topic, 0))
    finally:
        reader.close()


def end_offset(settings, topic: str) -> int:
    reader = kafka_clients.consumer(settings, enable_auto_commit=False)
    try:
        return reader.end_offsets([TopicPartition(topic, 0)])[TopicPartition(topic, 0)]
    finally:
        reader.close()


def one_cluster_topics(test_env: dict, prefix: str, target_configs: dict | None = None):
    """One cluster's publisher topics of their own (PREFIX-src-1 -> PREFIX-dst-1), created: the
    environment, its settings, the source and the target."""
    env = dict(test_env, CLUSTER_COUNT="1", CLUSTER_TOPIC_TEMPLATE=f"{prefix}-src-{{n}}",
               SUBSCRIBERS_TOPIC_TEMPLATE=f"{prefix}-dst-{{n}}")
    settings = config.load(env)
    source, target = settings.cluster_topic(1), settings.subscribers_topic(1)
    admin = kafka_clients.admin_client(settings)
    try:
        admin.create_topics([NewTopic(source, 1, 1),
                             NewTopic(target, 1, 1, topic_configs=target_configs or {})])
    finally:
        admin.close()
    return env, settings, source, target

def test_a_publisher_refused_for_good_stops_without_committing_past_the_update(kafka, test_env,
                                                                             tmp_path):
    suffix = uuid.uuid4().hex[:10]
    # A compacted target refuses a record without a key: INVALID_RECORD, not retriable.
    env, settings, source, target = one_cluster_topics(
        test_env, f"refused-{suffix}", {"cleanup.policy": "compact"})
    group = "cluster1-publisher"
    producer = kafka_clients.producer(settings)
    try:
        with running(tmp_path, "cluster_publisher", "cluster_publisher.py", "--cluster", "1",
                     env=env) as publisher:
            publisher.wait_for_log("ready: ", timeout_s=60)
            producer.send(source, key=b"main", value=update(0)).get(timeout=10)
            wait_until(lambda: committed(settings, group, source) == 1, timeout_s=30)
            assert end_offset(settings, target) == 1
            producer.send(source, value=update(2)).get(timeout=10)  # no key: refused for good
            producer.send(source, key=b"main", value=update(4)).get(timeout=10)
            assert publisher.process.wait(timeout=60) == EXIT_REFUSED
            log = publisher.log()
        assert (f"ERROR   cluster_publisher[1]: stopping: Kafka refused the update at "
                f"{source}[0]@1 for a reason that retrying cannot fix: ") in log
        assert "InvalidRecordError" in log
        assert "nothing of its batch is committed" in log
        assert committed(settings, group, source) == 1  # the refused update's offset
        assert end_offset(settings, target) == 1  # neither it nor the update after it
        # Started again (as its supervisor does), it resumes at the refused update.
        with running(tmp_path, "cluster_publisher_again", "cluster_publisher.py", "--cluster",
                     "1", env=env) as again:
            assert again.process.wait(timeout=60) == EXIT_REFUSED
            assert f"{source}[0]@1 for a reason that retrying cannot fix" in again.log()
        assert committed(settings, group, source) == 1
    finally:
        producer.close()


def test_a_publisher_joins_its_group_once_and_keeps_its_partition(kafka, test_env, tmp_path):
    """Subscribed before its metadata check, a publisher's first assignment is made on the
    topic's real partitions: no rebalance follows. (Before, one followed ~0.5 s after the first
    assignment whenever that join beat the next metadata response: every start of the whole
    stack, seldom on an idle machine, where this test passed too; kafka-python could abandon
    that rebalance, leaving the publisher without its partition for good.)"""
    suffix = uuid.uuid4().hex[:10]
    env, settings, source, target = one_cluster_topics(test_env, f"once-{suffix}")
    producer = kafka_clients.producer(settings)
    try:
        with running(tmp_path, "cluster_publisher", "cluster_publisher.py", "--cluster", "1",
                     env=env) as publisher:
            publisher.wait_for_log("ready: ", timeout_s=60)
            time.sleep(3)  # the metadata refreshes that followed the first join
            producer.send(source, key=b"main", value=update(0)).get(timeout=10)
            wait_until(lambda: end_offset(settings, target) == 1, timeout_s=30)
            log = publisher.log()
        ready = (f"INFO    cluster_publisher[1]: ready: in group cluster1-publisher for {source}, "
                 f"owns partition(s) [0], forwarding to {target}")
        assert log.count("ready: ") == 1
        assert ready in log
        assert "revoked" not in log
        assert "joining again" not in log
    finally:
        producer.close()
