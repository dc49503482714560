"""subscriber.py against a real Kafka broker and a real ws_server.py: in-order delivery,
poison records, two subscribers each in its own group (the server drops the second copy), a
killed or restarted subscriber, and at-least-once hand-over across server restarts.
(tests/test_delivery.py measures the gap when a subscriber is killed mid-stream.)"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from contextlib import ExitStack

import pytest
from kafka import TopicPartition
from kafka.admin import NewTopic
from websockets.sync.client import connect

from emojistream import config
from emojistream.common import kafka_clients, tokens
from tests.services import (
    Service,
    assert_clean_log,
    free_port,
    get_json,
    run,
    wait_for_health,
    wait_until,
)

CLUSTER = 1
KEY = "subscriber-test-key-with-32-bytes-or-more"
TOKEN_SECRET = "subscriber-test-token-secret-32-bytes-or-more"
QUIET_S = 2.0
TIMEOUT_S = 30  # generous: a busy machine


def update(second: int, fire: int) -> bytes:
    """A window update as the cluster publisher writes it."""
    message = {"window_start": f"2026-11-27T07:00:{second:02d}.000Z",
               "window_end": f"2026-11-27T07:00:{second + 2:02d}.000Z",
               "aggregates": [{"emoji_type": "🔥", "count": fire, "normalized_count": 0,
                               "unique_users": 1}]}
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


class Cluster:
    """Cluster 1's topic, WebSocket server and subscribers, on the test's own names and ports."""

    def __init__(self, kafka: config.Settings, test_env: dict, log_dir, stack: ExitStack):
        suffix = uuid.uuid4().hex[:10]
        self.port = free_port()
        self.publish_port = free_port()
        self.env = dict(test_env, SUBSCRIBERS_TOPIC_TEMPLATE=f"subs-{suffix}-{{n}}",
                        SUBSCRIBER_GROUP_TEMPLATE=f"subs-{suffix}-group-{{n}}-{{k}}",
                        WS_FIRST_PORT=str(self.port - CLUSTER + 1),
                        WS_PUBLISH_FIRST_PORT=str(self.publish_port - CLUSTER + 1),
                        SUBSCRIBER_KEY=KEY,
                        TOKEN_SECRET=TOKEN_SECRET)
        self.settings = config.load(self.env)
        self.topic = self.settings.subscribers_topic(CLUSTER)
        self.log_dir = log_dir
        self.stack = stack
        self.subscribers: dict[int, Service] = {}
        self.servers: list[Service] = []
        admin = kafka_clients.admin_client(kafka)
        try:
            admin.create_topics([NewTopic(self.topic, 1, 1)])
        finally:
            admin.close()
        self.producer = kafka_clients.producer(kafka)
        stack.callback(self.producer.close)

    @property
    def server(self) -> Service:
        return self.servers[-1]

    def health(self) -> dict:
        return get_json(f"http://localhost:{self.port}/health")[1]

    def start_server(self) -> Service:
        service = self._start(f"ws_server_{len(self.servers)}", "ws_server.py", "--cluster",
                              str(CLUSTER))
        self.servers.append(service)
        wait_for_health(f"http://localhost:{self.port}/health", service)
        return service

    def start_subscriber(self, member: int) -> Service:
        service = self._start(f"subscriber_{member}", "subscriber.py", "--cluster",
                              str(CLUSTER), "--id", str(member))
        self.subscribers[member] = service
        return service

    def _start(self, name: str, *args: str) -> Service:
        service = Service(self.log_dir, name, *args, env=self.env)
        self.stack.callback(service.kill)
        return service

    def wait_until_consuming(self, member: int, offset: int, count: int = 1) -> None:
        """Wait until ``member`` logged that it consumes the partition from ``offset``."""
        self.subscribers[member].wait_for_log(
            f"owns {self.topic} partition 0 from offset {offset}", timeout_s=TIMEOUT_S,
            count=count)

    def viewer(self):
        token = tokens.issue(TOKEN_SECRET, "test", CLUSTER, 60, time.time())
        # presence=0: the updates byte for byte as the subscribers hand them over.
        return connect(f"ws://localhost:{self.port}/?token={token}&presence=0", open_timeout=5)

    def committed_offset(self, member: int) -> int | None:
        """The committed offset of the partition in ``member``'s own group."""
        reader = kafka_clients.consumer(self.settings,
                                        group_id=self.settings.subscriber_group(CLUSTER, member),
                                        enable_auto_commit=False)
        try:  # reads the group's offsets without joining it
            return reader.committed(TopicPartition(self.topic, 0))
        finally:
            reader.close()

    def produce(self, *values: bytes) -> None:
        for value in values:
            self.producer.send(self.topic, value=value).get(timeout=10)


@pytest.fixture
def cluster(kafka, test_env, tmp_path):
    with ExitStack() as stack:
        yield Cluster(kafka, test_env, tmp_path, stack)


def receive(viewer, count: int, timeout_s: float = TIMEOUT_S) -> list[bytes]:
    return [viewer.recv(timeout=timeout_s).encode() for _ in range(count)]


def assert_nothing_arrives(viewer) -> None:
    with pytest.raises(TimeoutError):
        viewer.recv(timeout=QUIET_S)


def start_both(cluster) -> None:
    cluster.start_server()
    for member in (1, 2):
        cluster.start_subscriber(member)
    for member in (1, 2):
        cluster.wait_until_consuming(member, offset=0)
    wait_until(lambda: cluster.health()["subscribers"] == 2)


@pytest.mark.kafka
def test_both_forward_everything_and_viewers_get_each_update_once_even_when_one_is_killed(
        cluster):
    start_both(cluster)
    for member in (1, 2):  # each in a group of its own
        assert (f"ready: in group {cluster.settings.subscriber_group(CLUSTER, member)} for "
                f"{cluster.topic}, owns partition(s) [0]") in cluster.subscribers[member].log()

    first = [update(0, 10), update(2, 20), update(4, 30)]
    poison = os.urandom(64)
    with cluster.viewer() as viewer:
        wait_until(lambda: cluster.health()["viewers"] == 1)
        cluster.produce(first[0], first[1], poison, first[2])
        assert receive(viewer, 3) == first
        # The same record twice: the viewer sees it once.
        cluster.produce(first[2])
        assert_nothing_arrives(viewer)

        cluster.subscribers[1].process.send_signal(signal.SIGKILL)
        cluster.subscribers[1].process.wait(timeout=10)
        after = [update(6, 40), update(8, 50), update(10, 60)]
        cluster.produce(*after)
        assert receive(viewer, 3) == after
        assert_nothing_arrives(viewer)

    for member in (1, 2):
        assert (f"WARNING subscriber: skipping record at {cluster.topic}[0]@2: "
                in cluster.subscribers[member].log())
    assert cluster.subscribers[2].stop() == 0
    survivor_log = cluster.subscribers[2].log()
    assert_clean_log(survivor_log)
    assert "INFO    subscriber: stopped: 7 update(s) handed over, 1 record(s) skipped" \
        in survivor_log
    assert cluster.committed_offset(2) == 8
    assert cluster.server.stop() == 0
    # Every update came twice while both ran; the server broadcast each version once.
    assert "stopped: 6 update(s) broadcast, " in cluster.server.log()


@pytest.mark.kafka
def test_a_stopped_subscriber_exits_0_and_the_other_carries_on(cluster):
    start_both(cluster)
    with cluster.viewer() as viewer:
        wait_until(lambda: (cluster.health()["viewers"], cluster.health()["subscribers"])
                   == (1, 2))
        cluster.produce(update(0, 1))
        assert receive(viewer, 1) == [update(0, 1)]
        assert cluster.subscribers[1].stop() == 0
        cluster.produce(update(2, 2))
        assert receive(viewer, 1) == [update(2, 2)]
        assert_nothing_arrives(viewer)
    stopped_log = cluster.subscribers[1].log()
    assert_clean_log(stopped_log)
    assert "INFO    subscriber: stopped: 1 update(s) handed over, 0 record(s) skipped" \
        in stopped_log


@pytest.mark.kafka
def test_a_restarted_subscriber_catches_up_from_its_commit_without_duplicates(cluster):
    start_both(cluster)
    with cluster.viewer() as viewer:
        wait_until(lambda: cluster.health()["viewers"] == 1)
        cluster.produce(update(0, 1), update(2, 1))
        assert receive(viewer, 2) == [update(0, 1), update(2, 1)]
        wait_until(lambda: cluster.committed_offset(2) == 2, timeout_s=TIMEOUT_S)
        cluster.subscribers[2].process.send_signal(signal.SIGKILL)
        cluster.subscribers[2].process.wait(timeout=10)
        missed = [update(0, 2), update(4, 1)]  # a newer version of a window, and a new one
        cluster.produce(*missed)
        assert receive(viewer, 2) == missed
        cluster.start_subscriber(2)
        # It resumes where it left off and hands over what it missed: all repeats, dropped.
        cluster.wait_until_consuming(2, offset=2)
        wait_until(lambda: cluster.committed_offset(2) == 4, timeout_s=TIMEOUT_S)
        assert_nothing_arrives(viewer)
        cluster.produce(update(6, 1))
        assert receive(viewer, 1) == [update(6, 1)]
        assert_nothing_arrives(viewer)


@pytest.mark.kafka
def test_updates_wait_in_kafka_while_the_websocket_server_is_down(cluster):
    first_server = cluster.start_server()
    subscriber = cluster.start_subscriber(1)
    cluster.wait_until_consuming(1, offset=0)
    with cluster.viewer() as viewer:
        wait_until(lambda: cluster.health()["viewers"] == 1)
        cluster.produce(update(0, 1))
        assert receive(viewer, 1) == [update(0, 1)]
    assert first_server.stop() == 0
    cluster.produce(update(2, 2), b"not an update", update(4, 3))
    subscriber.wait_for_log(f"no connection to ws://127.0.0.1:{cluster.publish_port}/publish")
    second_server = cluster.start_server()
    wait_until(lambda: cluster.committed_offset(1) == 4, timeout_s=TIMEOUT_S,
               message="the records held back were not handed over to the new server")
    assert subscriber.stop() == 0
    assert "stopped: 3 update(s) handed over, 1 record(s) skipped" in subscriber.log()
    assert second_server.stop() == 0
    assert ("stopped: 2 update(s) broadcast, 0 repeated, 0 stale and 0 invalid dropped"
            in second_server.log())


@pytest.mark.kafka
def test_a_missing_topic_is_a_one_line_error(kafka, test_env):
    result = run("subscriber.py", "--cluster", "1", "--id", "1",
                 env=dict(test_env, SUBSCRIBERS_TOPIC_TEMPLATE="no-such-topic-{n}",
                          SUBSCRIBER_KEY=KEY))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(f"ERROR   subscriber: topic no-such-topic-1 does not exist at "
                             f"{kafka.kafka_bootstrap_servers}; run scripts/create_topics.sh")


def test_unreachable_kafka_is_a_one_line_error(test_env):
    result = run("subscriber.py", "--cluster", "1", "--id", "1",
                 env=dict(test_env, KAFKA_BOOTSTRAP_SERVERS="localhost:1", SUBSCRIBER_KEY=KEY))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "ERROR   subscriber: Kafka is not reachable at localhost:1" in lines[0]


@pytest.mark.kafka
def test_a_refused_key_is_a_one_line_error(cluster):
    cluster.start_server()
    result = run("subscriber.py", "--cluster", "1", "--id", "1",
                 env=dict(cluster.env, SUBSCRIBER_KEY="a-wrong-subscriber-key-of-32-bytes-or-more"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        f"ERROR   subscriber: ws://127.0.0.1:{cluster.publish_port}/publish refused the "
        "subscriber key "
        "(HTTP 401); SUBSCRIBER_KEY (or VAR_DIR/secrets/subscriber.key) must be the WebSocket "
        "server's")


@pytest.mark.kafka
def test_without_a_websocket_server_it_keeps_trying_and_stops_cleanly(cluster):
    subscriber = cluster.start_subscriber(1)
    subscriber.wait_for_log(f"no connection to ws://127.0.0.1:{cluster.publish_port}/publish",
                            count=3)
    assert "ready" not in subscriber.log()  # it does not take records it cannot hand over
    assert subscriber.stop() == 0
    assert_clean_log(subscriber.log())


def test_help_exits_0():
    result = run("subscriber.py", "--help", env=dict(os.environ))
    assert result.returncode == 0
    assert "--cluster" in result.stdout and "--id" in result.stdout
