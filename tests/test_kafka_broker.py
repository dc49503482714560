"""The foundation: a real Kafka broker started by the project's scripts, used by real clients."""

from __future__ import annotations

import subprocess

import pytest
from kafka.admin import NewTopic

from emojistream.common import kafka_clients
from tests.services import REPO_ROOT, run_script

pytestmark = pytest.mark.kafka


def create_topic(settings, name: str, partitions: int = 1) -> None:
    admin = kafka_clients.admin_client(settings)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def test_produce_and_consume_exactly_n_messages(kafka, topic_name):
    create_topic(kafka, topic_name, partitions=3)
    sent = [f"message-{i}".encode() for i in range(500)]
    producer = kafka_clients.producer(kafka, acks="all")
    for value in sent:
        producer.send(topic_name, value)
    producer.flush()
    producer.close()

    consumer = kafka_clients.consumer(kafka, topic_name, auto_offset_reset="earliest",
                                      group_id=topic_name, consumer_timeout_ms=5000)
    received = [record.value for record in consumer]
    consumer.close()
    assert sorted(received) == sorted(sent)
    assert len(received) == 500


def test_status_reports_the_running_broker(kafka, test_env):
    status = run_script("kafka.sh", "status", env=test_env)
    assert f"on localhost:{test_env['KAFKA_PORT']}" in status.stdout
    assert "Kafka runs (pid" in status.stdout


def test_second_start_reuses_the_running_broker(kafka, test_env):
    again = run_script("kafka.sh", "start", env=test_env)
    assert "already runs" in again.stdout


def describe(settings) -> dict[str, int]:
    admin = kafka_clients.admin_client(settings)
    try:
        return {t["name"]: len(t["partitions"])
                for t in admin.describe_topics(admin.list_topics())
                if not t["name"].startswith("__")}
    finally:
        admin.close()


def test_create_topics_is_idempotent_and_honours_settings(kafka, test_env, tmp_path):
    env = dict(test_env, CLUSTER_COUNT="4", EMOJI_EVENTS_PARTITIONS="6", TOPIC_PARTITIONS="2",
               EMOJI_EVENTS_TOPIC="it-emoji-events", AGGREGATED_TOPIC="it-aggregated",
               CLUSTER_TOPIC_TEMPLATE="it-cluster{n}-topic",
               SUBSCRIBERS_TOPIC_TEMPLATE="it-cluster{n}-topic-subscribers",
               STREAMS_TOPIC="it-streams")
    expected = {"it-emoji-events": 6, "it-aggregated": 2, "it-streams": 1}
    expected.update({f"it-cluster{n}-topic": 2 for n in range(1, 5)})
    expected.update({f"it-cluster{n}-topic-subscribers": 2 for n in range(1, 5)})

    first = run_script("create_topics.sh", env=env)
    assert first.stderr.count(" created, ") == 11, first.stderr
    after_first = {k: v for k, v in describe(kafka).items() if k.startswith("it-")}
    assert after_first == expected

    second = run_script("create_topics.sh", env=env)
    assert second.returncode == 0
    assert second.stderr.count(" exists, ") == 11, second.stderr
    assert " created, " not in second.stderr
    assert {k: v for k, v in describe(kafka).items() if k.startswith("it-")} == expected


def test_create_topics_flags_override_environment(kafka, test_env):
    env = dict(test_env, EMOJI_EVENTS_TOPIC="flag-events", AGGREGATED_TOPIC="flag-aggregated",
               CLUSTER_TOPIC_TEMPLATE="flag-c{n}", SUBSCRIBERS_TOPIC_TEMPLATE="flag-c{n}-subs")
    run_script("create_topics.sh", "--clusters", "2", "--events-partitions", "3", env=env)
    topics = {k: v for k, v in describe(kafka).items() if k.startswith("flag-")}
    assert topics == {"flag-events": 3, "flag-aggregated": 1, "flag-c1": 1, "flag-c2": 1,
                      "flag-c1-subs": 1, "flag-c2-subs": 1}


def test_create_topics_says_clearly_when_kafka_is_down(test_env):
    env = dict(test_env, KAFKA_BOOTSTRAP_SERVERS="localhost:1")
    result = run_script("create_topics.sh", env=env, check=False, timeout=60)
    assert result.returncode == 1
    assert "Kafka is not reachable at localhost:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_kafka_console_tools_work_as_in_kafka_bin(kafka, test_env, topic_name):
    bootstrap = kafka.kafka_bootstrap_servers
    run_script("kafka-topics.sh", "--bootstrap-server", bootstrap, "--create",
               "--topic", topic_name, "--partitions", "1", env=test_env)
    listed = run_script("kafka-topics.sh", "--bootstrap-server", bootstrap, "--list",
                        env=test_env)
    assert topic_name in listed.stdout.split()
    subprocess.run([str(REPO_ROOT / "scripts" / "kafka-console-producer.sh"),
                    "--bootstrap-server", bootstrap, "--topic", topic_name],
                   input="first\nsecond\n", text=True, env=test_env, check=True, timeout=60)
    consumed = run_script("kafka-console-consumer.sh", "--bootstrap-server", bootstrap,
                          "--topic", topic_name, "--from-beginning", "--max-messages", "2",
                          env=test_env)
    assert consumed.stdout.splitlines() == ["first", "second"]


def test_restart_reuses_the_formatted_storage(kafka, test_env, topic_name):
    create_topic(kafka, topic_name, partitions=2)
    stopped = run_script("kafka.sh", "stop", env=test_env)
    assert stopped.stdout.strip().endswith("Kafka stopped")
    status = run_script("kafka.sh", "status", env=test_env, check=False)
    assert (status.returncode, status.stdout.strip()) == (3, "kafka.sh: Kafka is not running")

    started = run_script("kafka.sh", "start", env=test_env)
    assert "formatting storage" not in started.stdout
    assert started.stdout.strip().endswith(f"Kafka is up on localhost:{test_env['KAFKA_PORT']}")
    assert describe(kafka)[topic_name] == 2
