"""A replicated Kafka: three KRaft brokers started by scripts/kafka.sh --brokers 3, topics with
three replicas, and no accepted event lost when a broker is SIGKILLed under load. Also the
settings of a deployment on several machines: what every kafka-python client gets (bootstrap
list, SASL, TLS) and where the WebSocket servers are."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
from kafka import TopicPartition
from kafka.admin import ConfigResource

from emojistream import config, kafka_clients
from testkit.sandbox import free_port_run
from tests.services import (
    free_port,
    isolated_env,
    pid_in_file,
    run_script,
    running,
    wait_for_health,
)

pytestmark = pytest.mark.kafka

BROKERS = 3


@pytest.fixture(scope="module")
def cluster_env(tmp_path_factory) -> dict:
    """Three brokers on their own ports and folder: broker K on KAFKA_PORT + 2(K-1)."""
    env = isolated_env(tmp_path_factory.mktemp("kafka-cluster"))
    first = free_port_run(2 * BROKERS)
    env.update(KAFKA_BROKERS=str(BROKERS), KAFKA_PORT=str(first),
               KAFKA_CONTROLLER_PORT=str(first + 1), KAFKA_PORT_STEP="2", KAFKA_HEAP="384m")
    try:
        started = run_script("kafka.sh", "start", env=env, check=False, timeout=240)
        assert started.returncode == 0, started.stdout + started.stderr
        yield env
    finally:
        stopped = run_script("kafka.sh", "stop", env=env, check=False, timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not list(Path(env["VAR_DIR"], "kafka").glob("broker-*/kafka.pid"))


def test_three_brokers_with_replicated_topics(cluster_env):
    settings = config.load(cluster_env)
    assert settings.kafka_bootstrap_servers == ",".join(
        f"localhost:{int(cluster_env['KAFKA_PORT']) + 2 * k}" for k in range(BROKERS))
    status = run_script("kafka.sh", "status", env=cluster_env)
    assert status.stdout.count("runs (pid") == BROKERS

    created = run_script("create_topics.sh", env=cluster_env)
    assert created.stderr.count(" created, ") == 2 + 2 * settings.cluster_count, created.stderr
    admin = kafka_clients.admin_client(settings)
    try:
        assert len(admin.describe_cluster()["brokers"]) == BROKERS
        topics = {t["name"]: t["partitions"] for t in admin.describe_topics()}
        configs = admin.describe_configs(
            [ConfigResource("TOPIC", name, ["min.insync.replicas"]) for name in topics],
            config_filter="all")["topic"]
    finally:
        admin.close()
    for name in (settings.emoji_events_topic, settings.aggregated_topic,
                 settings.cluster_topic(1), settings.subscribers_topic(1)):
        assert {len(p["replica_nodes"]) for p in topics[name]} == {3}, name
    min_isr = {name: configs[name]["min.insync.replicas"]["value"] for name in topics}
    assert min_isr[settings.emoji_events_topic] == "2"
    assert min_isr[settings.aggregated_topic] == "2"
    assert min_isr[settings.cluster_topic(1)] == "1"

    again = run_script("create_topics.sh", env=cluster_env)
    assert again.stderr.count(" exists, ") == 2 + 2 * settings.cluster_count, again.stderr


class SteadySender:
    """Posts one event a time to the ingest API at a steady rate from a thread, each with a
    user id of its own, and remembers the ids the API answered 200 for."""

    def __init__(self, url: str, rate: float):
        self.url, self.interval = url, 1.0 / rate
        self.accepted: list[str] = []
        self.statuses: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)

    def _run(self):
        session = requests.Session()
        i = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            user = f"steady-{i}"
            i += 1
            try:
                answer = session.post(self.url, json={"user_id": user, "emoji_type": "🔥",
                                                      "timestamp": int(time.time() * 1000)},
                                      timeout=30)
                self.statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    self.accepted.append(user)
            except requests.RequestException as err:
                self.statuses[type(err).__name__] += 1
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def steady_ids_in_topic(settings) -> collections.Counter:
    """How often each steady- user id is in the events topic, read up to its end offsets."""
    consumer = kafka_clients.consumer(settings)
    try:
        partitions = [TopicPartition(settings.emoji_events_topic, p)
                      for p in consumer.partitions_for_topic(settings.emoji_events_topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        end = consumer.end_offsets(partitions)
        ids = collections.Counter()
        deadline = time.monotonic() + 60
        while any(consumer.position(p) < end[p] for p in partitions):
            assert time.monotonic() < deadline, "the events topic was not read to its end"
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    user = json.loads(record.value)["user_id"]
                    if user.startswith("steady-"):
                        ids[user] += 1
        return ids
    finally:
        consumer.close()


def test_no_accepted_event_is_lost_when_a_broker_is_killed(cluster_env, tmp_path):
    env = dict(cluster_env, API_PORT=str(free_port()), API_WORKERS="1")
    run_script("create_topics.sh", env=env)
    settings = config.load(env)
    pid_file = Path(env["VAR_DIR"], "kafka", "broker-1", "kafka.pid")
    with running(tmp_path, "emoji_api", "emoji_api.py", env=env) as api:
        wait_for_health(f"http://localhost:{settings.api_port}/health", api, timeout_s=60)
        with SteadySender(f"http://localhost:{settings.api_port}/emoji", rate=40) as sender:
            time.sleep(3)
            before = len(sender.accepted)
            os.kill(pid_in_file(pid_file), signal.SIGKILL)
            time.sleep(10)
            during = len(sender.accepted) - before
            restarted = run_script("kafka.sh", "start", env=env, timeout=180)
            assert "starting Kafka broker 1" in restarted.stdout
            assert "Kafka broker 2 already runs" in restarted.stdout
            time.sleep(2)
        assert api.stop(timeout_s=60) == 0
    found = steady_ids_in_topic(settings)
    print(f"accepted {len(sender.accepted)} ({before} before the kill, {during} in the 10 s "
          f"after it), answers {dict(sender.statuses)}")
    assert before > 0 and during > 0, dict(sender.statuses)
    missing = set(sender.accepted) - set(found)
    assert not missing, f"{len(missing)} accepted events are not in Kafka"
    assert {user: n for user, n in found.items() if n > 1} == {}, "duplicates in the topic"
    assert set(found) == set(sender.accepted)
