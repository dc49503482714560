"""Every component's /metrics, without a JVM or a broker: the expected metric names, with exact
values after known actions."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from functools import partial
from types import SimpleNamespace

import pytest
from kafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve as ws_serve
from websockets.protocol import State

from emojistream import config, topology
from emojistream.aggregator.metrics import AggregatorMetrics
from emojistream.common import metrics, tokens
from emojistream.common.events import format_timestamp
from emojistream.common.streams import StreamCatalog
from emojistream.delivery import hub as ws_server
from emojistream.delivery.metrics import WsMetrics
from emojistream.delivery.routes import process_request
from emojistream.delivery.subscriber import Subscriber
from emojistream.ingest import app as emoji_api
from emojistream.ingest.metrics import IngestMetrics
from emojistream.ingest.sink import SinkUnavailable
from emojistream.ops import prometheus_config, status
from emojistream.ops.components import components
from emojistream.registration import app as registration_api
from emojistream.registration.balancer import ClusterHealth
from emojistream.registration.metrics import RegistrationMetrics
from emojistream.relay.relay import Relay
from testkit.processes import REPO_ROOT
from testkit.sandbox import free_port, free_port_run


def samples(text: str) -> dict:
    """{(name, ((label, value), ...)): value} of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


class FakeSink:
    """Takes events until told Kafka is gone; reports a fixed buffer, and counts failures as
    KafkaEventSink does."""

    def __init__(self, counters: IngestMetrics):
        self.events, self.down = [], False
        self.counters = counters
        self.buffer = (7, 700)
        self.fail(records=2, events=9)

    def fail(self, records: int, events: int) -> None:
        self.counters.send_errors.inc(records)
        self.counters.lost.inc(events)

    def send(self, events, received_at=None):
        if self.down:
            raise SinkUnavailable("no broker")
        self.events += events

    def problem(self):
        return None

    def pending(self):
        return self.buffer

    def close(self):
        pass


def event(**fields) -> dict:
    return {"user_id": "u1", "emoji_type": "🔥",
            "timestamp": format_timestamp(datetime.now(UTC)), **fields}


@pytest.fixture
def ingest():
    settings = config.load({"STREAMS": "main"})
    counters = IngestMetrics()
    sink = FakeSink(counters)
    app = emoji_api.create_app(settings, sink=sink, streams=StreamCatalog(settings),
                               counters=counters)
    return app.test_client(), sink


def test_ingest_counts_accepted_and_refused_events(ingest):
    client, sink = ingest
    batch = [event(), event(), event(), event(emoji_type="🦄")]
    assert client.post("/emojis", json=batch).status_code == 200
    assert client.post("/emoji", json=event(stream_id="other")).status_code == 404
    assert client.post("/emoji", json=event(user_id="")).status_code == 400
    sink.down = True
    assert client.post("/emojis", json=[event(), event()]).status_code == 503
    text = client.get("/metrics").text
    assert len(sink.events) == 3
    assert value(text, "emojistream_api_events_accepted_total") == 3
    assert value(text, "emojistream_api_events_refused_total", reason="invalid") == 2
    assert value(text, "emojistream_api_events_refused_total", reason="unknown_stream") == 1
    assert value(text, "emojistream_api_events_refused_total", reason="unavailable") == 2
    assert value(text, "emojistream_api_events_refused_total", reason="too_large") == 0
    assert value(text, "emojistream_api_requests_total", endpoint="/emojis", status="200") == 1
    assert value(text, "emojistream_api_requests_total", endpoint="/emojis", status="503") == 1
    assert value(text, "emojistream_api_requests_total", endpoint="/emoji", status="404") == 1
    assert value(text, "emojistream_api_requests_total", endpoint="/emoji", status="400") == 1


def test_ingest_reports_the_producer_buffer_and_its_errors(ingest):
    client, sink = ingest
    text = client.get("/metrics").text
    assert value(text, "emojistream_api_producer_buffer_bytes") == 700
    assert value(text, "emojistream_api_producer_buffer_events") == 7
    assert value(text, "emojistream_api_send_errors_total") == 2
    assert value(text, "emojistream_api_events_lost_total") == 9
    sink.buffer = (0, 0)
    sink.fail(records=1, events=1)
    text = client.get("/metrics").text
    assert value(text, "emojistream_api_producer_buffer_bytes") == 0
    assert value(text, "emojistream_api_send_errors_total") == 3
    assert value(text, "emojistream_api_events_lost_total") == 10


WORKER = """
import sys
import time
import urllib.request
from emojistream.common import metrics
from emojistream.ingest.metrics import IngestMetrics
metrics.use_multiprocess_values()
counters = IngestMetrics()
counters.accepted.inc(int(sys.argv[1]))
counters.buffer_bytes.set(int(sys.argv[1]) * 10)
"""
READER = """
from emojistream.common import metrics
print(metrics.exposition(metrics.multiprocess_registry())[0].decode())
"""


def test_ingest_workers_are_summed_in_multiprocess_mode(tmp_path):
    """As granian's workers do: each process writes its own files; /metrics sums them."""
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)}
    for count in ("3", "4"):
        subprocess.run([sys.executable, "-c", WORKER, count], env=env, check=True,
                       cwd=REPO_ROOT)
    text = subprocess.run([sys.executable, "-c", READER], env=env, check=True, text=True,
                          capture_output=True, cwd=REPO_ROOT).stdout
    assert value(text, "emojistream_api_events_accepted_total") == 7
    assert value(text, "emojistream_api_producer_buffer_bytes") == 70


# --- publishers and subscribers ---------------------------------------------------------------

UPDATE = json.dumps({"stream_id": "main", "window_start": "2026-11-27T07:15:56.000Z",
                     "window_end": "2026-11-27T07:15:58.000Z",
                     "aggregates": [{"emoji_type": "🔥", "count": 3, "normalized_count": 0,
                                     "unique_users": 2}]}).encode()
SOURCE = TopicPartition("cluster1-topic", 0)


def record(offset: int, value: bytes):
    return SimpleNamespace(topic=SOURCE.topic, partition=0, offset=offset, key=b"k", value=value)


class FakeConsumer:
    """An assignment of one partition, its position and its end as the last fetch told."""

    def __init__(self, position: int | None, end: int | None):
        self._position, self._end = position, end

    def assignment(self):
        return {SOURCE}

    def highwater(self, tp):
        return self._end

    def position(self, tp, timeout_ms=None):
        return self._position


class FakeProducer:
    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None):
        self.sent.append((topic, value))
        return SimpleNamespace(failed=lambda: False)

    def flush(self, timeout=None):
        pass


def fake_relay(consumer) -> Relay:
    forwarder = Relay.__new__(Relay)
    forwarder.settings, forwarder.targets = config.load({}), ["a", "b"]
    forwarder.log, forwarder.consumer = logging.getLogger("test"), consumer
    forwarder.producer = FakeProducer()
    forwarder.metrics = metrics.RelayMetrics()
    return forwarder


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode()


def test_a_publisher_serves_forwarded_skipped_and_lag_on_its_port():
    forwarder = fake_relay(FakeConsumer(position=10, end=14))
    forwarder._forward({SOURCE: [record(7, UPDATE), record(8, b"junk"), record(9, UPDATE)]})
    forwarder.metrics.observe_lag(forwarder.consumer)
    port = free_port()
    assert metrics.serve(forwarder.metrics.registry, "localhost", port, "test")
    text = scrape(f"http://localhost:{port}/metrics")
    assert len(forwarder.producer.sent) == 4
    assert value(text, "emojistream_relay_forwarded_total") == 2
    assert value(text, "emojistream_relay_skipped_total") == 1
    assert value(text, "emojistream_relay_retries_total") == 0
    assert value(text, "emojistream_consumer_lag") == 4


def test_a_taken_metrics_port_is_logged_and_not_fatal(caplog):
    port = free_port()
    assert metrics.serve(metrics.RelayMetrics().registry, "localhost", port, "first")
    assert not metrics.serve(metrics.RelayMetrics().registry, "localhost", port, "second")
    assert f"second: metrics port {port} on localhost is already in use" in caplog.text


@pytest.mark.parametrize("position, end, lag", [(5, 5, 0), (3, 11, 8), (None, 11, None),
                                                (4, None, None)])
def test_consumer_lag_is_what_the_last_fetch_left_behind(position, end, lag):
    assert metrics.consumer_lag(FakeConsumer(position, end)) == lag


def test_a_subscriber_counts_what_it_handed_over_and_skipped():
    handed = []
    subscriber = Subscriber(FakeConsumer(2, 2), outlet=None, stop=None, backoff=None)
    subscriber._commit = lambda tp, offset: None
    connection = SimpleNamespace(send=handed.append, state=State.OPEN,
                                 ping=lambda ack_on_close: SimpleNamespace(wait=lambda s: True))
    subscriber._hand_over(connection, SOURCE, [record(0, UPDATE), record(1, b"\xff")])
    subscriber.metrics.observe_lag(subscriber.consumer)
    text = metrics.exposition(subscriber.metrics.registry)[0].decode()
    assert handed == [UPDATE.decode()]
    assert value(text, "emojistream_subscriber_forwarded_total") == 1
    assert value(text, "emojistream_subscriber_skipped_total") == 1
    assert value(text, "emojistream_consumer_lag") == 0


def test_the_metrics_ports_of_kafka_only_processes_never_collide():
    settings = config.load({"METRICS_FIRST_PORT": "9310", "CLUSTER_COUNT": "3",
                            "SUBSCRIBERS_PER_CLUSTER": "2"})
    ports = [topology.aggregator_metrics_port(settings),
             topology.main_publisher_metrics_port(settings)]
    ports += [topology.cluster_publisher_metrics_port(settings, n) for n in settings.clusters]
    ports += [topology.subscriber_metrics_port(settings, n, k)
              for n in settings.clusters for k in (1, 2)]
    assert ports == list(range(9310, 9321))
    assert topology.metrics_port_count(settings) == 11


# --- WebSocket server -------------------------------------------------------------------------

WS_KEY = "metrics-test-subscriber-key-32-bytes-or-more"
WS_SECRET = "metrics-test-token-secret-32-bytes-or-more"


async def exercise_ws_server(port: int, publish_port: int) -> tuple[str, str]:
    """A viewer, a viewer with a forged token, a subscriber sending one update twice; what the
    viewer received and the server's /metrics."""
    hub = ws_server.Hub(config.load({}), 1, WS_KEY, WS_SECRET)
    hub.start()
    async with ws_serve(hub.handle, "localhost", port,
                        process_request=partial(process_request, hub)), \
            ws_serve(hub.handle, "127.0.0.1", publish_port,
                     process_request=partial(process_request, hub, publish=True)):
        good = tokens.issue(WS_SECRET, "viewer_1", 1, 60, time.time(), "main")
        async with ws_connect(f"ws://localhost:{port}/?token={good}&presence=0") as viewer, \
                ws_connect(f"ws://127.0.0.1:{publish_port}/publish",
                           additional_headers={"Authorization": f"Bearer {WS_KEY}"}) as pub:
            async with ws_connect(f"ws://localhost:{port}/?token=forged") as refused:
                await refused.wait_closed()
            await pub.send(UPDATE.decode())
            await pub.send(UPDATE.decode())
            received = await asyncio.wait_for(viewer.recv(), 5)
            await (await pub.ping())  # both updates read by the server
            text = await asyncio.to_thread(scrape, f"http://localhost:{port}/metrics")
        await hub.stop()
    return received, text


def test_a_websocket_server_serves_viewers_broadcasts_and_refusals_at_metrics():
    received, text = asyncio.run(exercise_ws_server(free_port(), free_port()))
    assert received == UPDATE.decode()
    assert value(text, "emojistream_ws_viewers") == 1
    assert value(text, "emojistream_ws_subscribers") == 1
    assert value(text, "emojistream_ws_broadcasts_total") == 1
    assert value(text, "emojistream_ws_messages_sent_total") == 1
    assert value(text, "emojistream_ws_broadcast_duration_seconds_count") == 1
    assert value(text, "emojistream_ws_tokens_refused_total") == 1
    assert value(text, "emojistream_ws_slow_viewers_dropped_total") == 0
    assert value(text, "emojistream_ws_updates_dropped_total", reason="duplicate") == 1
    assert value(text, "emojistream_ws_updates_dropped_total", reason="invalid") == 0


# --- registration API -------------------------------------------------------------------------

def test_the_registration_api_serves_registrations_and_each_clusters_load():
    settings = config.load({"CLUSTER_COUNT": "3", "TOKEN_SECRET": WS_SECRET,
                            "SUBSCRIBER_KEY": WS_KEY, "STREAMS": "main",
                            "ADMIN_KEY": "metrics-test-admin-key-32-bytes-or-more"})
    live = {1: 5, 2: None, 3: 2}  # cluster 2's server is down
    app = registration_api.create_app(
        settings, poll=False, streams=StreamCatalog(settings),
        probe=lambda n: None if live[n] is None else ClusterHealth(live[n], {}))
    client = app.test_client()
    answers = [client.post("/register", json={"client_id": name}).get_json()
               for name in ("a", "b", "c")]
    again = {"client_id": "a", "token": answers[0]["token"]}
    assert client.post("/register", json=again).get_json()["session"] == "resumed"
    assert client.post("/deregister", json={"client_id": "a"}).status_code == 200
    assert client.post("/deregister", json={"client_id": "zz"}).status_code == 200  # a no-op
    text = client.get("/metrics").text
    assert value(text, "emojistream_registrations_total", session="new") == 3
    assert value(text, "emojistream_registrations_total", session="resumed") == 1
    assert value(text, "emojistream_deregistrations_total") == 2
    for n in (1, 2, 3):
        assert value(text, "emojistream_cluster_healthy", cluster=str(n)) == int(n != 2)
    assert "emojistream_cluster_registered_viewers" not in text
    assert value(text, "emojistream_cluster_live_connections", cluster="1") == 5
    assert value(text, "emojistream_cluster_live_connections", cluster="3") == 2
    assert ("emojistream_cluster_live_connections", (("cluster", "2"),)) not in samples(text)


# --- aggregator -------------------------------------------------------------------------------

def progress(**overrides):
    """What pyspark's StreamingQueryProgress holds, for one batch."""
    return SimpleNamespace(**{
        "durationMs": {"triggerExecution": 1500}, "numInputRows": 40,
        "inputRowsPerSecond": 80.0, "processedRowsPerSecond": float("nan"),
        "observedMetrics": {"input": {"events": 1000, "malformed": 3, "untimely": 2}},
        "eventTime": {"watermark": "2026-11-27T07:15:50.000Z"},
        "stateOperators": [SimpleNamespace(numRowsTotal=6, numRowsDroppedByWatermark=7)],
        **overrides})


def test_the_aggregator_metrics_follow_each_batchs_progress():
    aggregator = AggregatorMetrics()
    watermark = datetime(2026, 11, 27, 7, 15, 50, tzinfo=UTC).timestamp()
    aggregator.record(progress(), now=watermark + 12.5)
    aggregator.record(progress(numInputRows=10, observedMetrics={},
                               eventTime={"watermark": "1970-01-01T00:00:00.000Z"},
                               stateOperators=[SimpleNamespace(numRowsTotal=4,
                                                               numRowsDroppedByWatermark=2)]),
                      now=0)
    text = metrics.exposition(aggregator.registry)[0].decode()
    assert value(text, "emojistream_aggregator_batches_total") == 2
    assert value(text, "emojistream_aggregator_batch_duration_seconds_count") == 2
    assert value(text, "emojistream_aggregator_batch_duration_seconds_sum") == 3.0
    assert value(text, "emojistream_aggregator_batch_duration_seconds_bucket", le="1.5") == 2
    assert value(text, "emojistream_aggregator_input_records_total") == 50
    assert value(text, "emojistream_aggregator_events_total") == 1000
    assert value(text, "emojistream_aggregator_events_skipped_total", reason="malformed") == 3
    assert value(text, "emojistream_aggregator_events_skipped_total", reason="untimely") == 2
    assert value(text, "emojistream_aggregator_input_rows_per_second") == 80
    assert value(text, "emojistream_aggregator_processed_rows_per_second") == 0
    assert value(text, "emojistream_aggregator_watermark_delay_seconds") == 12.5
    assert value(text, "emojistream_aggregator_state_rows") == 4
    assert value(text, "emojistream_aggregator_rows_dropped_by_watermark_total") == 9
    assert aggregator.dropped_late_total() == 9


# --- what operators read: the scrape config, the status table, the dashboard --------------------

def every_metric_name() -> set[str]:
    """The names of every sample the components expose."""
    viewers = SimpleNamespace(clusters=[1], is_healthy=lambda n: True, live_count=lambda n: 0)
    registries = [IngestMetrics().registry, AggregatorMetrics().registry,
                  metrics.RelayMetrics().registry,
                  metrics.RelayMetrics(prefix="subscriber").registry,
                  WsMetrics(SimpleNamespace(viewers=(), subscribers=())).registry,
                  RegistrationMetrics(viewers).registry]
    return {name for registry in registries
            for name, _ in samples(metrics.exposition(registry)[0].decode())}


def test_the_dashboard_queries_only_metrics_that_exist():
    dashboard = json.loads((REPO_ROOT / "docs" / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for expr in expressions for name in re.findall(r"emojistream_\w+", expr)}
    assert len(dashboard["panels"]) == 6
    assert used - every_metric_name() == set()


def test_the_scrape_config_has_a_target_per_component_with_its_labels():
    settings = config.load({"CLUSTER_COUNT": "2", "SUBSCRIBERS_PER_CLUSTER": "2",
                            "METRICS_FIRST_PORT": "9310", "KAFKA_METRICS_PORT": "9404",
                            "KAFKA_BROKERS": "3", "API_PORT": "5000"})
    jobs = prometheus_config.scrape_targets(settings)
    assert {job: len(entries) for job, entries in jobs.items()} == {
        "kafka": 3, "spark_aggregator": 1, "ws_server": 2, "registration_api": 1,
        "subscriber": 4, "cluster_publisher": 2, "main_publisher": 1, "emoji_api": 1}
    assert jobs["kafka"][2] == {"targets": ["localhost:9406"],
                                "labels": {"component": "kafka_3", "host": "local"}}
    assert jobs["subscriber"][3] == {"targets": ["localhost:9317"],
                                     "labels": {"component": "subscriber_2_2", "host": "local",
                                                "cluster": "2"}}
    assert jobs["emoji_api"] == [{"targets": ["localhost:5000"],
                                  "labels": {"component": "emoji_api", "host": "local"}}]


def test_status_shows_down_components_and_the_lag_of_running_consumers(tmp_path):
    settings = config.load({"CLUSTER_COUNT": "1", "SUBSCRIBERS_PER_CLUSTER": "1",
                            "KAFKA_BROKERS": "1", "METRICS_FIRST_PORT": str(free_port_run(4))})
    relay_metrics = metrics.RelayMetrics()
    relay_metrics.lag.set(12)
    assert metrics.serve(relay_metrics.registry, "localhost",
                         topology.main_publisher_metrics_port(settings), "test")
    crashes = tmp_path / "crashes.json"
    crashes.write_text('{"main_publisher": 2}')
    running = {"statename": "RUNNING", "start": 1000}
    info = {"main_publisher": {**running, "pid": 4242}, "subscriber_1_1": {**running, "pid": 4343},
            "kafka": {"statename": "BACKOFF", "pid": 0, "start": 900}}
    table = status.rows(settings, "local", components(settings), info, crashes, now=3725)
    by_name = {row["name"]: row for row in table}
    assert [row["name"] for row in table] == [
        "kafka", "spark_aggregator", "ws_server_1", "registration_api", "subscriber_1_1",
        "cluster_publisher_1", "main_publisher", "emoji_api"]
    assert by_name["main_publisher"]["lag"] == 12 and by_name["main_publisher"]["pid"] == 4242
    assert by_name["subscriber_1_1"]["lag"] is None  # up, but its metrics do not answer
    assert by_name["kafka"]["state"] == "down" and by_name["kafka"]["pid"] is None
    assert by_name["main_publisher"]["restarts"] == 2
    lines = status.render(table).splitlines()
    assert lines[7].split() == [
        "main_publisher", "local", "RUNNING", "4242", "0:45:25", "2",
        f"http://localhost:{topology.main_publisher_metrics_port(settings)}/metrics", "12"]
    assert lines[1].split()[:3] == ["kafka", "local", "BACKOFF"]
    assert lines[5].split()[-1] == "?"
