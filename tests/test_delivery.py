"""The delivery tier end to end, with real processes and real sockets: balanced registration
over live WebSocket servers, viewer tokens, redundant subscribers, reconnecting viewers,
1,000 concurrent viewers (the 10,000 figure is measured by bench.viewers_load, not here), and
stateless registration with viewer sessions: nobody else can evict a viewer, a restarted
registration process refuses no token it issued, two registration processes balance one set
of servers, and the per-address limits."""

from __future__ import annotations

import asyncio
import base64
import http.client
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

    def register(self, client_id: str, token: str | None = None,
                 registration_url: str | None = None) -> dict:
        """POST /register (presenting ``token``, the previous answer's, if given)."""
        body = {"client_id": client_id} if token is None else {"client_id": client_id,
                                                               "token": token}
        answer = requests.post(f"{registration_url or self.registration_url}/register",
                               json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def live(self) -> list[int]:
        """Each server's live viewer connections (its own GET /health)."""
        return [get_json(self.health_url(n))[1]["viewers"] for n in range(1, self.clusters + 1)]

    def publisher(self, n: int):
        return connect(self.publish_url(n), additional_headers={"Authorization": f"Bearer {KEY}"},
                       open_timeout=5)


@pytest.fixture
def delivery(test_env, tmp_path):
    with ExitStack() as stack:
        yield Delivery(test_env, tmp_path, stack)


def bare(endpoint: str) -> str:
    """A viewer's endpoint asking for the updates as the aggregator wrote them (presence=0:
    without "watching"), which these tests compare exactly."""
    return f"{endpoint}&presence=0"


def counts(assignments: list[str]) -> dict[str, int]:
    return {c: assignments.count(c) for c in sorted(set(assignments))}


# --- 1. balanced registration -----------------------------------------------------------------

def test_30_viewers_spread_10_10_10_and_a_cluster_whose_server_is_down_is_skipped(delivery):
    # One worker: the exact spread of one balancer (two: tests of section 6).
    delivery.env["REGISTRATION_WORKERS"] = "1"
    delivery.start()
    answers = [delivery.register(f"viewer-{i}") for i in range(30)]
    assert counts([a["cluster_id"] for a in answers]) == {
        "cluster1": 10, "cluster2": 10, "cluster3": 10}
    with ExitStack() as viewers:
        for answer in answers:
            viewers.enter_context(connect(answer["subscriber_endpoint"], open_timeout=10))
        wait_until(lambda: [c["live_connections"] for c in delivery.clusters_view()]
                   == [10] * 3, timeout_s=15, message="the live counts did not become 10/10/10")

        delivery.ws_servers[2].kill()  # SIGKILL
        delivery.wait_for_health_of(2, False)
        assert delivery.clusters_view()[1] == {
            "cluster_id": "cluster2", "endpoint": f"ws://localhost:{delivery.port(2)}/",
            "healthy": False, "live_connections": None}
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
    delivery.env["REGISTRATION_WORKERS"] = "1"
    delivery.start()
    first = delivery.register("mover")
    assert first["cluster_id"] == "cluster1"
    delivery.ws_servers[1].kill()
    time.sleep(0.6)  # longer ago than RECHECK_S since the last poll
    # Registering again re-checks the client's server at once, without waiting for a poll.
    moved = delivery.register("mover", first["token"])
    assert (moved["cluster_id"] in ("cluster2", "cluster3"), moved["session"]) == (
        True, "resumed")
    with connect(bare(moved["subscriber_endpoint"]), open_timeout=10) as viewer:
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
    with connect(bare(f"ws://localhost:{port}/?token={quote(token)}"), open_timeout=5) as viewer:
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
        return connect(bare(f"ws://localhost:{port}/?token={quote(token)}"), open_timeout=5)

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
        viewer = stack.enter_context(connect(bare(f"ws://localhost:{port}/?token={quote(token)}"),
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
    """The window starts of the updates printed (not the server's recovery messages)."""
    messages = [json.loads(line) for line in output.splitlines() if line]
    return [message["window_start"] for message in messages if "type" not in message]


def recoveries_printed(output: str) -> list[dict]:
    return [message for message in map(json.loads, filter(None, output.splitlines()))
            if message.get("type") == "recovery"]


def printing_simulator(delivery, client_id: str):
    """client_simulator.py printing the updates as JSON while a publisher sends an update
    every 0.5 s, once it has printed two: (simulator, its output file, publisher, cluster)."""
    delivery.start()
    out_path = delivery.log_dir / "simulator.out"
    stdout = open(out_path, "w")
    delivery.stack.callback(stdout.close)
    simulator = delivery.start_service(
        "simulator", "client_simulator.py", client_id, "--print-json", "--rate", "0",
        "--registration-url", delivery.registration_url, stdout=stdout)
    publisher = FakePublisher(delivery)
    publisher.start()
    delivery.stack.callback(publisher.join, 10)
    delivery.stack.callback(publisher.stop.set)
    wait_until(lambda: len(windows_printed(out_path.read_text())) >= 2, timeout_s=20,
               message="the simulator printed no updates")
    cluster = next(line.split(": ")[2].split(" ")[0] for line in simulator.log().splitlines()
                   if f"registered '{client_id}': " in line)
    return simulator, out_path, publisher, cluster


def test_viewers_of_a_dead_server_receive_again_from_another_cluster_within_10_s(delivery):
    simulator, out_path, publisher, cluster = printing_simulator(delivery, "sim-1")
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


def test_a_viewer_whose_server_is_killed_recovers_on_another_cluster_with_no_gap(delivery):
    """Every cluster's server has every update; the simulator's reconnection passes since=the
    newest window it printed, so the windows published while it was away come first."""
    delivery.env["VIEWER_RETRY_INITIAL_S"] = "1.5"  # away for 2 windows at least (0.5 s each)
    simulator, out_path, publisher, cluster = printing_simulator(delivery, "sim-gap")
    delivery.ws_servers[int(cluster.removeprefix("cluster"))].kill()  # SIGKILL
    before = len(windows_printed(out_path.read_text()))
    wait_until(lambda: len(recoveries_printed(out_path.read_text())) == 1
               and len(windows_printed(out_path.read_text())) >= before + 6, timeout_s=20,
               message="the simulator did not recover on another cluster")
    publisher.stop.set()
    publisher.join(10)
    assert simulator.stop() == 0
    printed = windows_printed(out_path.read_text())
    numbers = {json.loads(update_text(n))["window_start"]: n for n in publisher.sent_at}
    # Every window from the first printed to the last, each once, in order: no gap.
    first = numbers[printed[0]]
    assert [numbers[w] for w in printed] == list(range(first, first + len(printed)))
    (recovery,) = recoveries_printed(out_path.read_text())
    lines = [json.loads(line) for line in out_path.read_text().splitlines()]
    at = lines.index(recovery)
    # It asked for what came after the last window it printed, and got it all from the backlog.
    assert recovery["since"] == lines[at - 1]["window_start"]
    assert recovery["complete"] is True
    assert recovery["windows"] >= 2
    assert [line["window_start"] for line in lines[at + 1:at + 1 + recovery["windows"]]] == \
        printed[at:at + recovery["windows"]]
    log = simulator.log()
    assert f"(was {cluster})" in [line for line in log.splitlines()
                                  if "registered again: " in line][-1]


# --- 5. 1,000 viewers -------------------------------------------------------------------------

def test_1000_concurrent_viewers_all_receive_every_update_exactly_once(delivery):
    delivery.env["REGISTRATION_WORKERS"] = "1"  # the exact spread of one balancer
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


# --- 6. stateless registration and viewer sessions --------------------------------------------

def session_of(answer: dict) -> str:
    return tokens.read(SECRET, answer["token"], time.time()).session


def test_a_second_party_cannot_evict_a_viewer_and_its_own_reconnect_and_failover_work(delivery):
    """The reproduction of issue 18: register victim-1 and connect; a second party registers
    victim-1 and connects. Before sessions, the first viewer was closed with 4409."""
    delivery.start()  # two registration workers, the default
    victim = delivery.register("victim-1")
    cluster = int(victim["cluster_id"].removeprefix("cluster"))
    with ExitStack() as stack:
        first = stack.enter_context(connect(bare(victim["subscriber_endpoint"]),
                                            open_timeout=10))
        # The intruder registers victim-1 until it lands on the victim's server (a new session
        # each time: it cannot present the victim's token).
        for _ in range(6):
            intruder = delivery.register("victim-1")
            if intruder["cluster_id"] == victim["cluster_id"]:
                break
        assert (intruder["cluster_id"], intruder["session"]) == (victim["cluster_id"], "new")
        assert session_of(intruder) != session_of(victim)
        second = stack.enter_context(connect(bare(intruder["subscriber_endpoint"]),
                                             open_timeout=10))
        wait_until(lambda: delivery.live()[cluster - 1] == 2, timeout_s=10,
                   message="the intruder was not served alongside the viewer")
        publisher = stack.enter_context(delivery.publisher(cluster))
        publisher.send(update_text(101))
        assert first.recv(timeout=10) == update_text(101)  # not closed: still receiving
        assert second.recv(timeout=10) == update_text(101)

        # The viewer's own reconnect (a reload): its token's session replaces its connection.
        again = delivery.register("victim-1", victim["token"])
        assert (again["cluster_id"], again["session"]) == (victim["cluster_id"], "resumed")
        assert session_of(again) == session_of(victim)
        reconnected = stack.enter_context(connect(bare(again["subscriber_endpoint"]),
                                                  open_timeout=10))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                first.recv(timeout=10)  # the snapshot may come before the close
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            4409, "replaced by a newer connection of this session")
        skip_snapshot(reconnected)
        publisher.send(update_text(102))
        assert reconnected.recv(timeout=10) == update_text(102)
        assert second.recv(timeout=10) == update_text(102)  # the other session is untouched

        # Failover: the viewer's server dies; registering again with its token moves its
        # session to a live cluster, where it receives.
        delivery.ws_servers[cluster].kill()
        delivery.wait_for_health_of(cluster, False)
        # Each registration worker learns of the death at its own poll (or at once, by the
        # recheck of a re-registering viewer's server when its last poll is older than
        # RECHECK_S): as a real client, the viewer registers again until it is moved.
        for _ in range(20):
            moved = delivery.register("victim-1", again["token"])
            if moved["cluster_id"] != victim["cluster_id"]:
                break
            time.sleep(0.3)
        assert moved["cluster_id"] != victim["cluster_id"]
        assert (moved["session"], session_of(moved)) == ("resumed", session_of(victim))
        new_cluster = int(moved["cluster_id"].removeprefix("cluster"))
        with connect(bare(moved["subscriber_endpoint"]), open_timeout=10) as failed_over, \
                delivery.publisher(new_cluster) as other:
            skip_snapshot(failed_over)
            other.send(update_text(103))
            assert failed_over.recv(timeout=10) == update_text(103)
    log = delivery.ws_servers[cluster].log()
    assert log.count("viewer 'victim-1' connected again from ") == 1  # the reconnect only


def test_a_registration_process_restarted_mid_run_refuses_no_token_it_issued(delivery):
    delivery.start()
    before = [delivery.register(f"restart-{i}") for i in range(30)]
    with ExitStack() as viewers:
        for answer in before[:15]:
            viewers.enter_context(connect(answer["subscriber_endpoint"], open_timeout=10))
        registration = delivery.services[delivery.clusters]
        assert registration.stop() == 0  # SIGTERM: the API is gone
        with pytest.raises(requests.ConnectionError):
            delivery.register("nobody-answers")
        restarted = delivery.start_service("registration_api_2", "registration_api.py")
        wait_for_health(f"{delivery.registration_url}/health", restarted)
        # Tokens issued before the restart still connect ...
        for answer in before[15:]:
            viewers.enter_context(connect(answer["subscriber_endpoint"], open_timeout=10))
        wait_until(lambda: sum(delivery.live()) == 30, timeout_s=15,
                   message="not every token issued before the restart connected")
        # ... and the restarted process resumes every session on its cluster.
        after = [delivery.register(f"restart-{i}", a["token"]) for i, a in enumerate(before)]
        assert [(a["cluster_id"], a["session"]) for a in after] == [
            (b["cluster_id"], "resumed") for b in before]
        assert [session_of(a) for a in after] == [session_of(b) for b in before]
        wait_until(lambda: sum(c["live_connections"] or 0 for c in delivery.clusters_view())
                   == 30, timeout_s=10, message="the restarted process does not count them")
        assert get_json(f"{delivery.registration_url}/health")[1] == {
            "status": "ok", "live_viewers": 30, "healthy_clusters": 3}


def test_two_registration_processes_balance_one_set_of_servers_evenly(delivery):
    """Two separate registration processes (each one worker: two independent balancers), the
    registrations alternating between them in waves that connect as they go, over servers of
    which one starts with 60 viewers already: each process steers new viewers by the live
    counts it polls, and the three end within 10% of each other."""
    delivery.env["REGISTRATION_WORKERS"] = "1"
    delivery.start()
    other_port = free_port()
    other = delivery.start_service("registration_api_b", "registration_api.py", "--port",
                                   str(other_port))
    other_url = f"http://localhost:{other_port}"
    wait_for_health(f"{other_url}/health", other)
    wait_until(lambda: all(c["healthy"] for c in get_json(f"{other_url}/clusters")[1]),
               timeout_s=15)
    urls = [delivery.registration_url, other_url]
    preloaded = [{"client_id": f"early-{i}", "cluster_id": "cluster1",
                  "subscriber_endpoint": f"ws://localhost:{delivery.port(1)}/?token="
                  + quote(tokens.issue(SECRET, f"early-{i}", 1, 600, time.time(),
                                       session=tokens.new_session()))} for i in range(60)]

    async def scenario() -> tuple[list[int], dict[str, int]]:
        viewers = await viewers_load.open_viewers(preloaded)
        by_process: dict[str, int] = {}
        try:
            for wave in range(4):
                await asyncio.to_thread(wait_for_polls, [60 + 60 * wave])
                answers = [dict(await asyncio.to_thread(delivery.register, f"w{wave}-{i}",
                                                        None, urls[i % 2]),
                                client_id=f"w{wave}-{i}") for i in range(60)]
                for i, answer in enumerate(answers):
                    key = f"{i % 2}:{answer['cluster_id']}"
                    by_process[key] = by_process.get(key, 0) + 1
                viewers += await viewers_load.open_viewers(answers)
            assert sum(v.connected for v in viewers) == 300
            await asyncio.to_thread(wait_until, lambda: sum(delivery.live()) == 300, 15)
            return delivery.live(), by_process
        finally:
            await viewers_load.close_viewers(viewers)

    def wait_for_polls(total: list[int]) -> None:
        """Until both processes' polls count every connected viewer."""
        wait_until(lambda: all(sum(c["live_connections"] or 0
                                   for c in get_json(f"{url}/clusters")[1]) == total[0]
                               for url in urls), timeout_s=15,
                   message=f"the registration processes never counted {total[0]} viewers")

    live, by_process = asyncio.run(scenario())
    assert sum(live) == 300
    assert max(live) - min(live) <= 10, live  # 10% of the 100 each would have
    # Both processes assigned, and both steered the first waves away from cluster1.
    assert sum(n for k, n in by_process.items() if k.startswith("0:")) == 120
    assert sum(n for k, n in by_process.items() if k.startswith("1:")) == 120
    assert by_process.get("0:cluster1", 0) < 40 and by_process.get("1:cluster1", 0) < 40


def test_per_address_limits_still_answer_429_with_several_workers(delivery):
    """REGISTRATION_BURST_PER_ADDRESS is counted by each worker process: a client's keep-alive
    connection stays with one worker, so it gets exactly the burst, then 429; another local
    source address has a bucket of its own."""
    delivery.env.update(REGISTRATION_BURST_PER_ADDRESS="5", REGISTRATION_RATE_PER_ADDRESS="0.05")
    delivery.start()
    with requests.Session() as session:
        answers = [session.post(f"{delivery.registration_url}/register",
                                json={"client_id": f"limited-{i}"}, timeout=10)
                   for i in range(7)]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
    assert answers[5].headers["Retry-After"] == "20"
    assert answers[5].json() == {
        "error": "too many registrations from 127.0.0.1: at most 5 at once and 0.05 a second "
                 "(REGISTRATION_BURST_PER_ADDRESS, REGISTRATION_RATE_PER_ADDRESS)"}
    connection = http.client.HTTPConnection("localhost", delivery.registration_port,
                                            timeout=10, source_address=("127.0.0.2", 0))
    try:
        connection.request("POST", "/register", body=json.dumps({"client_id": "elsewhere"}),
                           headers={"Content-Type": "application/json"})
        assert connection.getresponse().status == 200
    finally:
        connection.close()


# --- presence across servers ------------------------------------------------------------------

def test_watching_counts_the_streams_viewers_on_every_server(test_env, tmp_path):
    """Each server adds the other servers' viewers of the stream (their GET /health, polled
    every WS_PRESENCE_POLL_S) to its own: two viewers on cluster 1 and one on cluster 2 are
    3 watching in every update, on both servers; a server that dies counts for nothing."""
    with ExitStack() as stack:
        delivery = Delivery(test_env, tmp_path, stack, WS_PRESENCE_POLL_S="0.2").start()

        def viewer(client_id: str, cluster: int):
            token = tokens.issue(SECRET, client_id, cluster, 60, time.time())
            return stack.enter_context(connect(
                f"ws://localhost:{delivery.port(cluster)}/?token={quote(token)}",
                open_timeout=5))

        ones = [viewer("one-a", 1), viewer("one-b", 1)]
        two = viewer("two", 2)
        wait_until(lambda: delivery.live() == [2, 1, 0])
        time.sleep(0.6)  # more than two polls

        def watching_after(cluster: int, number: int, viewers) -> list[int]:
            with delivery.publisher(cluster) as publisher:
                publisher.send(update_text(number))
            return [json.loads(v.recv(timeout=5))["watching"] for v in viewers]

        assert watching_after(1, 2001, ones) == [3, 3]
        assert watching_after(2, 2001, [two]) == [3]
        two.close()
        wait_until(lambda: delivery.live() == [2, 0, 0])
        time.sleep(0.6)
        assert watching_after(1, 2002, ones) == [2, 2]

        replacement = viewer("two-again", 2)
        wait_until(lambda: delivery.live() == [2, 1, 0])
        time.sleep(0.6)
        skip_snapshot(replacement)
        assert watching_after(2, 2003, [replacement]) == [3]
        delivery.ws_servers[1].kill()
        time.sleep(0.6)
        assert watching_after(2, 2004, [replacement]) == [1]
        assert "presence: cluster 1's server does not answer at" in \
            delivery.ws_servers[2].log()
