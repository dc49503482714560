"""The delivery tier end to end, with real processes and real sockets: balanced registration
over live WebSocket servers, viewer tokens, redundant subscribers, reconnecting viewers, and
1,000 concurrent viewers (the 10,000 figure is measured by bench.viewers_load, not here)."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import threading
import time
import uuid
from contextlib import ExitStack
from urllib.parse import quote

import pytest
import requests
from kafka.admin import NewTopic
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from bench import viewers_load
from emojistream import config
from emojistream.common import kafka_clients, tokens
from tests.services import Service, free_port, free_port_run, get_json, wait_for_health, wait_until

KEY = "delivery-test-subscriber-key-32-bytes-or-more"
SECRET = "delivery-test-token-secret-32-bytes-or-more"
QUIET_S = 1.0


def update_text(number: int, count: int = 1) -> str:
    """A window update for the ``number``-th 2-second window of a test day."""
    start = 1_800_000_000 + 2 * number
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start))
    end = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + 2))
    return json.dumps({"window_start": f"{stamp}.000Z", "window_end": f"{end}.000Z",
                       "aggregates": [{"emoji_type": "🔥", "count": count,
                                       "normalized_count": 0, "unique_users": 1}]},
                      ensure_ascii=False, separators=(",", ":"))


class Delivery:
    """A registration API and WebSocket servers on free ports, each stopped by its pid."""

    def __init__(self, test_env: dict, log_dir, stack: ExitStack, clusters: int = 3, **extra):
        self.log_dir = log_dir
        self.stack = stack
        self.clusters = clusters
        self.registration_port = free_port()
        self.ws_first_port = free_port_run(clusters)
        self.ws_publish_first_port = free_port_run(clusters)
        self.env = dict(test_env, CLUSTER_COUNT=str(clusters),
                        REGISTRATION_PORT=str(self.registration_port),
                        WS_FIRST_PORT=str(self.ws_first_port),
                        WS_PUBLISH_FIRST_PORT=str(self.ws_publish_first_port), SUBSCRIBER_KEY=KEY,
                        TOKEN_SECRET=SECRET, WS_HEALTH_POLL_S="0.3",
                        **{name: str(value) for name, value in extra.items()})
        self.registration_url = f"http://localhost:{self.registration_port}"
        self.ws_servers: dict[int, Service] = {}
        self.services: list[Service] = []

    def start(self) -> Delivery:
        for n in range(1, self.clusters + 1):
            self.start_ws_server(n, wait=False)
        for n in range(1, self.clusters + 1):
            wait_for_health(self.health_url(n), self.ws_servers[n])
        registration = self.start_service("registration_api", "registration_api.py")
        wait_for_health(f"{self.registration_url}/health", registration)
        for n in range(1, self.clusters + 1):
            self.wait_for_health_of(n, True)
        return self

    def start_service(self, name: str, *args: str, **options) -> Service:
        service = Service(self.log_dir, name, *args, env=self.env, **options)
        self.stack.callback(service.kill)
        self.services.append(service)
        return service

    def start_ws_server(self, n: int, wait: bool = True) -> Service:
        service = self.start_service(f"ws_server_{n}_{time.monotonic_ns()}", "ws_server.py",
                                     "--cluster", str(n))
        self.ws_servers[n] = service
        if wait:
            wait_for_health(self.health_url(n), service)
        return service

    def port(self, n: int) -> int:
        return self.ws_first_port + n - 1

    def health_url(self, n: int) -> str:
        return f"http://localhost:{self.port(n)}/health"

    def publish_url(self, n: int) -> str:
        return f"ws://127.0.0.1:{self.ws_publish_first_port + n - 1}/publish"

    def clusters_view(self) -> list[dict]:
        status, body = get_json(f"{self.registration_url}/clusters")
        assert status == 200, body
        return body

    def wait_for_health_of(self, n: int, healthy: bool, timeout_s: float = 15) -> None:
        wait_until(lambda: self.clusters_view()[n - 1]["healthy"] is healthy,
                   timeout_s=timeout_s,
                   message=f"/clusters never showed cluster{n} healthy={healthy}")

    def register(self, client_id: str) -> dict:
        answer = requests.post(f"{self.registration_url}/register",
                               json={"client_id": client_id}, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def publisher(self, n: int):
        return connect(self.publish_url(n), additional_headers={"Authorization": f"Bearer {KEY}"},
                       open_timeout=5)


@pytest.fixture
def delivery(test_env, tmp_path):
    with ExitStack() as stack:
        yield Delivery(test_env, tmp_path, stack)


def counts(assignments: list[str]) -> dict[str, int]:
    return {c: assignments.count(c) for c in sorted(set(assignments))}


# --- 1. balanced registration -----------------------------------------------------------------

def test_30_viewers_spread_10_10_10_and_a_cluster_whose_server_is_down_is_skipped(delivery):
    delivery.start()
    answers = [delivery.register(f"viewer-{i}") for i in range(30)]
    assert counts([a["cluster_id"] for a in answers]) == {
        "cluster1": 10, "cluster2": 10, "cluster3": 10}
    with ExitStack() as viewers:
        for answer in answers:
            viewers.enter_context(connect(answer["subscriber_endpoint"], open_timeout=10))
        wait_until(lambda: [(c["live_connections"], c["registered_viewers"])
                            for c in delivery.clusters_view()] == [(10, 10)] * 3,
                   timeout_s=15, message="the live counts did not become 10/10/10")

        delivery.ws_servers[2].kill()  # SIGKILL
        delivery.wait_for_health_of(2, False)
        assert delivery.clusters_view()[1] == {
            "cluster_id": "cluster2", "endpoint": f"ws://localhost:{delivery.port(2)}/",
            "healthy": False, "live_connections": None, "registered_viewers": 10}
        later = [delivery.register(f"later-{i}")["cluster_id"] for i in range(6)]
        assert counts(later) == {"cluster1": 3, "cluster3": 3}

        delivery.start_ws_server(2)  # restarted: assignable again, and the least loaded
        delivery.wait_for_health_of(2, True)
        back = delivery.register("after-restart")
        assert back["cluster_id"] == "cluster2"
        with connect(back["subscriber_endpoint"], open_timeout=10):
            wait_until(lambda: delivery.clusters_view()[1]["live_connections"] == 1,
                       timeout_s=10)
    log = delivery.services[3].log()  # the registration API's
    assert "WARNING registration_api: cluster2 is down" in log
    assert "INFO    registration_api: cluster2 is up (0 live viewer(s)): assignable" in log


def test_a_viewer_whose_cluster_is_down_is_moved_when_it_registers_again(delivery):
    delivery.env["WS_HEALTH_POLL_S"] = "60"  # only the initial poll: the recheck must notice
    delivery.start()
    first = delivery.register("mover")
    assert first["cluster_id"] == "cluster1"
    delivery.ws_servers[1].kill()
    time.sleep(0.6)  # longer ago than RECHECK_S since the last poll
    # Registering again re-checks the client's server at once, without waiting for a poll.
    moved = delivery.register("mover")
    assert moved["cluster_id"] in ("cluster2", "cluster3")
    with connect(moved["subscriber_endpoint"], open_timeout=10) as viewer:
        with delivery.publisher(int(moved["cluster_id"][-1])) as publisher:
            publisher.send(update_text(1))
            assert viewer.recv(timeout=10) == update_text(1)


# --- 2. authenticated connections -------------------------------------------------------------

PUBLISH_PORTS: dict[int, int] = {}  # one_server's port -> its publish listener's


def publish_port(port: int) -> int:
    return PUBLISH_PORTS[port]


@pytest.fixture(scope="module")
def one_server(tmp_path_factory, test_env):
    """Cluster 1's WebSocket server alone (shared by the token tests)."""
    log_dir = tmp_path_factory.mktemp("one_server")
    port = free_port()
    PUBLISH_PORTS[port] = free_port()
    env = dict(test_env, WS_FIRST_PORT=str(port), WS_PUBLISH_FIRST_PORT=str(PUBLISH_PORTS[port]),
               SUBSCRIBER_KEY=KEY, TOKEN_SECRET=SECRET, REFUSALS_LOG_INTERVAL_S="0.2")
    service = Service(log_dir, "ws_server", "ws_server.py", "--cluster", "1", env=env)
    try:
        wait_for_health(f"http://localhost:{port}/health", service)
        yield port, service
    finally:
        service.kill()


def viewers_on(port: int) -> int:
    return get_json(f"http://localhost:{port}/health")[1]["viewers"]


def skip_snapshot(connection) -> None:
    """Read the updates a server sends a viewer as it connects (the latest of its stream's two
    newest windows, when earlier tests published some)."""
    for _ in range(2):
        try:
            message = connection.recv(timeout=1)
        except TimeoutError:
            return
        assert "window_start" in json.loads(message), message


def tampered() -> str:
    """A genuine token for cluster 2 whose payload was edited to say cluster 1."""
    genuine = tokens.issue(SECRET, "mallory", 2, 60, time.time())
    payload, signature = genuine.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["cl"] = 1
    edited = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{edited}.{signature}"


@pytest.mark.parametrize("query, code, reason", [
    ("", 4401, "missing token"),
    ("?token=", 4401, "missing token"),
    ("?client_id=someone", 4401, "missing token"),
    (lambda: "?token=" + tokens.issue("not-the-secret", "eve", 1, 60, time.time()),
     4401, "invalid token"),
    (lambda: "?token=" + tampered(), 4401, "invalid token"),
    ("?token=garbage", 4401, "invalid token"),
    (lambda: "?token=" + tokens.issue(SECRET, "late", 1, -5, time.time()),
     4401, "token expired"),
    (lambda: "?token=" + tokens.issue(SECRET, "lost", 2, 60, time.time()),
     4403, "token is for cluster 2, this is cluster 1"),
], ids=["none", "empty", "client-id-only", "forged", "tampered", "garbage", "expired",
        "other-cluster"])
def test_a_connection_without_a_valid_token_is_closed_with_a_clear_code(one_server, query,
                                                                        code, reason):
    port, service = one_server
    query = query() if callable(query) else query
    with connect(f"ws://localhost:{port}/{query}", open_timeout=5) as refused:
        with pytest.raises(ConnectionClosed) as closed:
            refused.recv(timeout=5)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (code, reason)
    assert viewers_on(port) == 0  # never counted as a viewer
    # Logged as a count (refusals.py), within REFUSALS_LOG_INTERVAL_S.
    wait_until(lambda: any(" ws_server: refused " in line and f"{reason} ({code}) " in line
                           for line in service.log().splitlines()), timeout_s=5)


def test_a_valid_token_connects_and_receives(one_server):
    port, _service = one_server
    token = tokens.issue(SECRET, "alice", 1, 60, time.time())
    with connect(f"ws://localhost:{port}/?token={quote(token)}", open_timeout=5) as viewer:
        wait_until(lambda: viewers_on(port) == 1)
        with connect(f"ws://127.0.0.1:{publish_port(port)}/publish",
                     additional_headers={"Authorization": f"Bearer {KEY}"},
                     open_timeout=5) as publisher:
            publisher.send(update_text(7))
            assert viewer.recv(timeout=5) == update_text(7)


def test_a_viewers_message_reaches_no_other_viewer(one_server):
    port, _service = one_server

    def viewer(client_id):
        token = tokens.issue(SECRET, client_id, 1, 60, time.time())
        return connect(f"ws://localhost:{port}/?token={quote(token)}", open_timeout=5)

    with viewer("talker") as talker, viewer("listener") as listener:
        wait_until(lambda: viewers_on(port) == 2)
        for connection in (listener, talker):
            skip_snapshot(connection)
        talker.send(update_text(1000, count=666))  # shaped like an update: still nobody
        talker.send("hello everyone")
        talker.send(b"\x00binary")
        for connection in (listener, talker):
            with pytest.raises(TimeoutError):
                connection.recv(timeout=QUIET_S)
        # Its token does not open the subscribers' endpoint either.
        token = tokens.issue(SECRET, "talker", 1, 60, time.time())
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{publish_port(port)}/publish?token={quote(token)}",
                    additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=5)
        assert refused.value.response.status_code == 401
        with connect(f"ws://127.0.0.1:{publish_port(port)}/publish",
                     additional_headers={"Authorization": f"Bearer {KEY}"},
                     open_timeout=5) as publisher:
            publisher.send(update_text(1001))
            assert listener.recv(timeout=5) == update_text(1001)
            assert talker.recv(timeout=5) == update_text(1001)


# --- 3. redundant subscribers -----------------------------------------------------------------

class Receiver(threading.Thread):
    """Collects (receipt time, message) from a viewer connection until it closes."""

    def __init__(self, connection):
        super().__init__(daemon=True)
        self.connection = connection
        self.received: list[tuple[float, str]] = []

    def run(self):
        try:
            for message in self.connection:
                self.received.append((time.monotonic(), message))
        except ConnectionClosed:
            pass


@pytest.mark.kafka
def test_killing_one_of_two_subscribers_leaves_no_gap_and_no_duplicate(kafka, test_env,
                                                                       tmp_path):
    suffix = uuid.uuid4().hex[:10]
    port = free_port()
    env = dict(test_env, WS_FIRST_PORT=str(port), WS_PUBLISH_FIRST_PORT=str(free_port()),
               SUBSCRIBER_KEY=KEY, TOKEN_SECRET=SECRET,
               SUBSCRIBERS_TOPIC_TEMPLATE=f"failover-{suffix}-{{n}}",
               SUBSCRIBER_GROUP_TEMPLATE=f"failover-{suffix}-{{n}}-{{k}}")
    settings = config.load(env)
    topic = settings.subscribers_topic(1)
    admin = kafka_clients.admin_client(kafka)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()
    produced = [update_text(i, count=i + 1) for i in range(24)]
    with ExitStack() as stack:
        def start(name, *args):
            service = Service(tmp_path, name, *args, env=env)
            stack.callback(service.kill)
            return service

        server = start("ws_server", "ws_server.py", "--cluster", "1")
        wait_for_health(f"http://localhost:{port}/health", server)
        subscribers = {k: start(f"subscriber_{k}", "subscriber.py", "--cluster", "1",
                                "--id", str(k)) for k in (1, 2)}
        for subscriber in subscribers.values():
            subscriber.wait_for_log(f"owns {topic} partition 0 from offset 0", timeout_s=60)
        token = tokens.issue(SECRET, "watcher", 1, 600, time.time())
        viewer = stack.enter_context(connect(f"ws://localhost:{port}/?token={quote(token)}",
                                             open_timeout=5))
        wait_until(lambda: get_json(f"http://localhost:{port}/health")[1]["subscribers"] == 2
                   and get_json(f"http://localhost:{port}/health")[1]["viewers"] == 1,
                   timeout_s=15)
        receiver = Receiver(viewer)
        receiver.start()
        producer = kafka_clients.producer(kafka)
        stack.callback(producer.close)

        killed_at = None
        next_at = time.monotonic()
        for number, message in enumerate(produced):
            if number == 8:
                subscribers[1].process.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
            producer.send(topic, value=message.encode()).get(timeout=10)
            next_at += 0.5
            time.sleep(max(0.0, next_at - time.monotonic()))
        subscribers[1].process.wait(timeout=10)
        wait_until(lambda: len(receiver.received) >= len(produced), timeout_s=15,
                   message=f"{len(receiver.received)} of {len(produced)} updates received")
        time.sleep(QUIET_S)  # any duplicate would arrive meanwhile
        assert server.stop() == 0

    messages = [message for _, message in receiver.received]
    assert messages == produced  # every update exactly once, in order
    times = [at for at, _ in receiver.received]
    before = [at for at in times if at < killed_at]
    after = [at for at in times if at >= killed_at]
    series = before[-1:] + after
    gaps = [b - a for a, b in zip(series, series[1:], strict=False)]
    assert after and max(gaps) <= 5.0, f"largest gap after the kill: {max(gaps):.1f} s"
    assert "stopped: 24 update(s) broadcast" in server.log()


# --- 4. reconnecting viewers ------------------------------------------------------------------

class FakePublisher(threading.Thread):
    """Publishes update number i to every cluster every 0.5 s, as the subscribers would;
    a cluster whose server is gone is retried each round."""

    def __init__(self, delivery: Delivery):
        super().__init__(daemon=True)
        self.delivery = delivery
        self.stop = threading.Event()
        self.sent_at: dict[int, float] = {}

    def run(self):
        connections = {}
        number = 0
        while not self.stop.is_set():
            self.sent_at[number] = time.monotonic()
            for n in range(1, self.delivery.clusters + 1):
                try:
                    if n not in connections:
                        connections[n] = connect(
                            self.delivery.publish_url(n), open_timeout=2, legacy=True,
                            additional_headers={"Authorization": f"Bearer {KEY}"})
                    connections[n].send(update_text(number))
                except (OSError, ConnectionClosed, InvalidStatus, TimeoutError):
                    connections.pop(n, None)
            number += 1
            self.stop.wait(0.5)
        for connection in connections.values():
            connection.close()


def windows_printed(output: str) -> list[str]:
    return [json.loads(line)["window_start"] for line in output.splitlines() if line]


def test_viewers_of_a_dead_server_receive_again_from_another_cluster_within_10_s(delivery):
    delivery.start()
    out_path = delivery.log_dir / "simulator.out"
    stdout = open(out_path, "w")
    delivery.stack.callback(stdout.close)
    simulator = delivery.start_service(
        "simulator", "client_simulator.py", "sim-1", "--print-json", "--rate", "0",
        "--registration-url", delivery.registration_url, stdout=stdout)
    publisher = FakePublisher(delivery)
    publisher.start()
    delivery.stack.callback(publisher.join, 10)
    delivery.stack.callback(publisher.stop.set)
    wait_until(lambda: len(windows_printed(out_path.read_text())) >= 2, timeout_s=20,
               message="the simulator printed no updates")
    cluster = next(line.split(": ")[2].split(" ")[0] for line in simulator.log().splitlines()
                   if "registered 'sim-1': " in line)
    dead = int(cluster.removeprefix("cluster"))

    delivery.ws_servers[dead].kill()  # SIGKILL
    killed_at = time.monotonic()
    # The first update published after the kill (the dead server cannot have sent it).
    wait_until(lambda: any(at > killed_at for at in publisher.sent_at.values()), timeout_s=5)
    first_after = min(n for n, at in publisher.sent_at.items() if at > killed_at)
    expected = {json.loads(update_text(n))["window_start"] for n in range(first_after, 10_000)}
    wait_until(lambda: expected & set(windows_printed(out_path.read_text())), timeout_s=10,
               interval_s=0.05,
               message="the simulator did not receive again within 10 s of its server's death")
    received_again_s = time.monotonic() - killed_at
    assert received_again_s <= 10

    log = simulator.log()
    moved = [line for line in log.splitlines() if "registered again: " in line]
    assert moved and f"(was {cluster})" in moved[-1], log
    new_cluster = moved[-1].split("registered again: ")[1].split(" ")[0]
    assert new_cluster != cluster
    delivery.wait_for_health_of(dead, False)
    # The registration API learns of the new connection at its next poll of that server.
    new_index = int(new_cluster.removeprefix("cluster")) - 1
    wait_until(lambda: delivery.clusters_view()[new_index]["live_connections"] == 1,
               timeout_s=10, message="the new cluster's server does not count the viewer")
    # No window was printed twice.
    printed = windows_printed(out_path.read_text())
    assert len(printed) == len(set(printed))
    assert simulator.stop() == 0


# --- 5. 1,000 viewers -------------------------------------------------------------------------

def test_1000_concurrent_viewers_all_receive_every_update_exactly_once(delivery):
    delivery.start()
    viewers_load.raise_open_file_limit()
    client_ids = [f"crowd-{i}" for i in range(1000)]
    assignments = viewers_load.register_all(delivery.registration_url, client_ids)
    assert counts([a["cluster_id"] for a in assignments]) == {
        "cluster1": 334, "cluster2": 333, "cluster3": 333}
    urls = {f"cluster{n}": delivery.publish_url(n) for n in range(1, 4)}

    async def scenario():
        viewers = await viewers_load.open_viewers(assignments, timeout_s=120)
        try:
            assert sum(v.connected for v in viewers) == 1000, \
                sorted({v.error for v in viewers if v.error})[:3]
            await asyncio.to_thread(wait_until, lambda: sum(
                get_json(delivery.health_url(n))[1]["viewers"] for n in range(1, 4)) == 1000,
                30)
            windows, _handed_over, _health = await asyncio.to_thread(
                viewers_load.publish, urls, KEY, 5, 0.5)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(
                    len(v.received) == 5 for v in viewers):
                await asyncio.sleep(0.1)
            await asyncio.sleep(QUIET_S)  # any duplicate would arrive meanwhile
            return windows, [dict(v.received) for v in viewers]
        finally:
            await viewers_load.close_viewers(viewers)

    windows, received = asyncio.run(scenario())
    assert len(set(windows)) == 5
    missing = [i for i, r in enumerate(received) if set(r) != set(windows)]
    assert not missing, f"{len(missing)} viewer(s) missed updates"
    assert all(len(times) == 1 for r in received for times in r.values()), "duplicates"
    # The servers answered their health checks throughout.
    assert all(c["healthy"] for c in delivery.clusters_view())
