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
import uuid

import pytest
import requests
from kafka import TopicPartition
from kafka.admin import ConfigResource, NewTopic

from emojistream import config, topology
from emojistream.common import kafka_clients
from testkit.processes import component_pid, component_status, supervisor_runs
from testkit.sandbox import free_port_run
from testkit.topics import events_of
from tests.services import (
    free_port,
    isolated_env,
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
        assert not supervisor_runs(env)


def test_three_brokers_with_replicated_topics(cluster_env):
    settings = config.load(cluster_env)
    assert settings.kafka_bootstrap_servers == ",".join(
        f"localhost:{int(cluster_env['KAFKA_PORT']) + 2 * k}" for k in range(BROKERS))
    status = run_script("kafka.sh", "status", env=cluster_env)
    assert status.stdout.count("runs (pid") == BROKERS

    created = run_script("create_topics.sh", env=cluster_env)
    # emoji-events, the aggregated topic, two per cluster, and the streams catalog
    assert created.stderr.count(" created, ") == 3 + 2 * settings.cluster_count, created.stderr
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
    assert again.stderr.count(" exists, ") == 3 + 2 * settings.cluster_count, again.stderr


def test_each_broker_serves_its_metrics_on_a_port_of_its_own(cluster_env):
    """Broker K's JMX exporter listens on KAFKA_METRICS_PORT + K - 1; one broker of the three
    is the active controller."""
    settings = config.load(cluster_env)
    ports = topology.kafka_metrics_ports(settings)
    assert ports == [int(cluster_env["KAFKA_METRICS_PORT"]) + k for k in range(BROKERS)]
    controllers = []
    for port in ports:
        text = requests.get(f"http://localhost:{port}/metrics", timeout=10).text
        line = next(line for line in text.splitlines()
                    if line.startswith("kafka_controller_activecontrollercount "))
        controllers.append(float(line.split()[1]))
    assert sorted(controllers) == [0.0, 0.0, 1.0]


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
                for event in (e for record in records for e in events_of(record.value)):
                    if event["user_id"].startswith("steady-"):
                        ids[event["user_id"]] += 1
        return ids
    finally:
        consumer.close()


def fire_counts(settings, timeout_s: float = 1) -> dict[str, int]:
    """The 🔥 count of each window of stream main in the aggregated topic: the latest update of
    each, read from the topic's start."""
    consumer = kafka_clients.consumer(settings, settings.aggregated_topic,
                                      auto_offset_reset="earliest",
                                      consumer_timeout_ms=int(timeout_s * 1000))
    try:
        latest = {record.key.decode(): json.loads(record.value) for record in consumer}
    finally:
        consumer.close()
    return {key: sum(a["count"] for a in update["aggregates"] if a["emoji_type"] == "🔥")
            for key, update in latest.items() if key.startswith("main/")}


def test_no_accepted_event_is_lost_when_a_broker_is_killed(cluster_env, tmp_path):
    """The API's producer retries through the failover, within INGEST_DELIVERY_TIMEOUT_S; the
    aggregator, running all along, counts every accepted event in its window (the watermark
    waits for that bound), and drops none as late."""
    env = dict(cluster_env, API_PORT=str(free_port()), API_WORKERS="1",
               EMOJI_EVENTS_TOPIC="failover-events", AGGREGATED_TOPIC="failover-aggregated",
               SPARK_DRIVER_MEMORY="768m", SPARK_UI_PORT=str(free_port()),
               METRICS_FIRST_PORT=str(free_port()))
    run_script("create_topics.sh", env=env)
    settings = config.load(env)
    with running(tmp_path, "spark_aggregator", "spark_aggregator.py", "--checkpoint",
                 str(tmp_path / "checkpoint"), env=env) as aggregator, \
            running(tmp_path, "emoji_api", "emoji_api.py", env=env) as api:
        aggregator.wait_for_log("ready:", timeout_s=240)
        wait_for_health(f"http://localhost:{settings.api_port}/health", api, timeout_s=60)
        with SteadySender(f"http://localhost:{settings.api_port}/emoji", rate=40) as sender:
            time.sleep(3)
            before = len(sender.accepted)
            killed = component_pid(env, "kafka_1")
            os.kill(killed, signal.SIGKILL)
            time.sleep(10)
            during = len(sender.accepted) - before
            # The supervisor has brought it back; kafka.sh start finds every broker up.
            restarted = run_script("kafka.sh", "start", env=env, timeout=180)
            assert "Kafka broker 1 already runs" in restarted.stdout
            assert component_pid(env, "kafka_1") != killed
            assert component_status(env)["kafka_1"]["restarts"] == 1
            time.sleep(2)
        assert api.stop(timeout_s=60) == 0
        # Every accepted event counted in a window of the aggregator that ran through it all.
        deadline = time.monotonic() + 120
        counts = fire_counts(settings)
        while sum(counts.values()) != len(sender.accepted) and time.monotonic() < deadline:
            assert aggregator.running(), aggregator.log()
            counts = fire_counts(settings)
        aggregator_log = aggregator.log()
        assert aggregator.stop(timeout_s=60) == 0
    found = steady_ids_in_topic(settings)
    print(f"accepted {len(sender.accepted)} ({before} before the kill, {during} in the 10 s "
          f"after it), answers {dict(sender.statuses)}; counted {sum(counts.values())} in "
          f"{len(counts)} windows")
    assert before > 0 and during > 0, dict(sender.statuses)
    missing = set(sender.accepted) - set(found)
    assert not missing, f"{len(missing)} accepted events are not in Kafka"
    assert {user: n for user, n in found.items() if n > 1} == {}, "duplicates in the topic"
    assert set(found) == set(sender.accepted)
    assert sum(counts.values()) == len(sender.accepted), aggregator_log[-3000:]
    assert "later than the watermark" not in aggregator_log


# --- a publisher while the topic it writes is down ----------------------------------------------

def window_update(number: int) -> bytes:
    start = f"2026-11-29T10:{number // 30:02d}:{2 * (number % 30):02d}.000Z"
    return json.dumps({"window_start": start, "window_end": start,
                       "aggregates": [{"emoji_type": "🔥", "count": number}]}).encode()


class UpdateSender:
    """Writes a numbered window update to ``topic`` every 0.2 s from a thread and remembers the
    numbers Kafka acknowledged."""

    def __init__(self, settings, topic: str):
        self.settings, self.topic = settings, topic
        self.acknowledged: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)

    def _run(self):
        producer = kafka_clients.producer(self.settings, acks="all")
        number = 0
        try:
            while not self._stop.wait(0.2):
                number += 1
                producer.send(self.topic, window_update(number)).get(timeout=10)
                self.acknowledged.append(number)
        finally:
            producer.close()


def counts_in(settings, topic: str) -> list[int]:
    """The counts of the updates in ``topic``, read from its start to its end."""
    consumer = kafka_clients.consumer(settings)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning()
        end = consumer.end_offsets([partition])[partition]
        counts = []
        while consumer.position(partition) < end:
            for records in consumer.poll(timeout_ms=1000).values():
                counts += [json.loads(r.value)["aggregates"][0]["count"] for r in records]
        return counts
    finally:
        consumer.close()


def test_a_publisher_loses_no_update_while_its_target_is_down_past_the_delivery_timeout(
        cluster_env, tmp_path):
    """The publisher reads a topic on broker 1 and writes a topic whose only replica is on broker
    3. Broker 3 is killed for longer than the publisher's delivery timeout (3 s here): the sends
    fail while the group's commits still work, and a publisher that committed anyway would lose
    the updates of the outage. It must send them again once broker 3 is back."""
    suffix = uuid.uuid4().hex[:8]
    source, target = f"relay-source-{suffix}", f"relay-target-{suffix}-1"
    env = dict(cluster_env, AGGREGATED_TOPIC=source, CLUSTER_COUNT="1",
               CLUSTER_TOPIC_TEMPLATE=f"relay-target-{suffix}-{{n}}",
               KAFKA_DELIVERY_TIMEOUT_S="3")
    settings = config.load(env)
    admin = kafka_clients.admin_client(settings)
    try:
        admin.create_topics([NewTopic(source, replica_assignments={0: [1]}),
                             NewTopic(target, replica_assignments={0: [3]})])
    finally:
        admin.close()
    with running(tmp_path, "main_publisher", "main_publisher.py", env=env) as publisher:
        publisher.wait_for_log("ready: ", timeout_s=60)
        with UpdateSender(settings, source) as sender:
            wait_until_counted(settings, target, lambda: sender.acknowledged[:5])
            # Stopped through its supervisor, so that it stays down past the timeouts.
            run_script("stop_all.sh", "kafka_3", env=env, timeout=120)
            before = len(sender.acknowledged)
            # At least 10 s (over three delivery timeouts) and 25 updates into the outage.
            time.sleep(10)
            deadline = time.monotonic() + 60
            while len(sender.acknowledged) - before < 25 and time.monotonic() < deadline:
                time.sleep(0.5)
            during = len(sender.acknowledged) - before
            restarted = run_script("kafka.sh", "start", env=env, timeout=180)
            assert "starting Kafka broker 3" in restarted.stdout
            time.sleep(3)
        wait_until_counted(settings, target, lambda: sender.acknowledged)
        assert publisher.running()
        assert "not committing: sending the batch again" in publisher.log()
        assert "Kafka acknowledges again, after" in publisher.log()
        assert publisher.stop() == 0
    assert during >= 25, "the source topic did not take updates during the outage"


def wait_until_counted(settings, topic: str, expected, timeout_s: float = 90) -> None:
    """Until every count ``expected()`` names is in ``topic`` (repeats are allowed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = set(expected()) - set(counts_in(settings, topic))
        if not missing and expected():
            return
        assert time.monotonic() < deadline, f"{len(missing)} update(s) never arrived"
        time.sleep(1)
