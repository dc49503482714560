"""The ingest API against a real Kafka broker: what clients are told and what reaches the topic."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests
from kafka import TopicPartition
from kafka.admin import NewTopic

from emojistream import config
from emojistream.common import kafka_clients
from emojistream.common.events import encode, format_timestamp
from emojistream.common.streams import StreamCatalog, StreamWriter
from emojistream.ingest.app import SINK, STREAMS, create_app
from emojistream.ingest.server import worker_app
from emojistream.ingest.sink import KafkaEventSink
from testkit.topics import events_of
from tests.services import REPO_ROOT, free_port, run_script

pytestmark = pytest.mark.kafka

IST = timezone(timedelta(hours=5, minutes=30))
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)"
                      r" +[\w.]+: ")


def create_topic(settings, name: str, partitions: int) -> None:
    admin = kafka_clients.admin_client(settings)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class TopicTail:
    """Reads what was written to a topic since it was created, so each test sees only its own."""

    def __init__(self, settings, topic: str, from_beginning: bool = False):
        self.consumer = kafka_clients.consumer(settings, group_id=None, enable_auto_commit=False)
        self.partitions = [TopicPartition(topic, p)
                           for p in sorted(self.consumer.partitions_for_topic(topic))]
        self.consumer.assign(self.partitions)
        self.start = (self.consumer.beginning_offsets(self.partitions) if from_beginning
                      else self.consumer.end_offsets(self.partitions))

    def records(self, timeout_s: float = 20) -> list:
        """Every record written since the start: (partition, key, value bytes, timestamp)."""
        end = self.consumer.end_offsets(self.partitions)
        for tp in self.partitions:
            self.consumer.seek(tp, self.start[tp])
        found, deadline = [], time.monotonic() + timeout_s
        while any(self.consumer.position(tp) < end[tp] for tp in self.partitions):
            assert time.monotonic() < deadline, "records did not arrive"
            for batch in self.consumer.poll(timeout_ms=500).values():
                found += [(r.partition, r.key, r.value, r.timestamp) for r in batch
                          if r.offset < end[TopicPartition(r.topic, r.partition)]]
        return found

    def close(self) -> None:
        self.consumer.close()


def values(records) -> list[bytes]:
    """The events of the records, each as the API encodes it, sorted."""
    return sorted(encode(event) for _, _, value, _ in records for event in events_of(value))


def moment_ago(seconds: float) -> datetime:
    """A moment this long ago, to the millisecond (the precision kept on the topic)."""
    now = datetime.now(UTC) - timedelta(seconds=seconds)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def event(user_id="client_1", emoji_type="🔥", seconds_ago=-1.5, **changes) -> dict:
    """An event whose timestamp is kept as sent for the next 4.5 s (it starts 1.5 s ahead, like
    a client clock running fast), in India's time zone to show the conversion to UTC."""
    item = {"user_id": user_id, "emoji_type": emoji_type,
            "timestamp": moment_ago(seconds_ago).astimezone(IST).isoformat()}
    item.update(changes)
    return item


def canonical(item: dict) -> dict:
    moment = datetime.fromisoformat(item["timestamp"])
    return {"user_id": item["user_id"], "emoji_type": item["emoji_type"],
            "timestamp": format_timestamp(moment), "stream_id": item.get("stream_id", "main")}


# --- fixtures: one events topic and one app for the module ----------------------------------

@pytest.fixture(scope="module")
def settings(kafka, test_env) -> config.Settings:
    topic, streams_topic = unique_topic("api-events"), unique_topic("api-streams")
    create_topic(kafka, topic, kafka.emoji_events_partitions)
    create_topic(kafka, streams_topic, 1)
    return config.load(dict(test_env, EMOJI_EVENTS_TOPIC=topic, STREAMS_TOPIC=streams_topic,
                            STREAMS="main,final-2026"))


@pytest.fixture(scope="module")
def app(settings):
    app = worker_app(settings)  # connected to Kafka, and the streams topic read, as it serves
    yield app
    app.extensions[SINK].close(10)
    app.extensions[STREAMS].stop()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def tail(app, settings):
    """The module topic's new records, read after the app's producer delivered everything."""
    topic_tail = TopicTail(settings, settings.emoji_events_topic)

    def records():
        app.extensions[SINK].flush(10)
        return topic_tail.records()

    yield records
    topic_tail.close()


def post(client, path: str, body, content_type="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    return client.post(path, data=data, content_type=content_type)


# --- accepted events ------------------------------------------------------------------------

def test_single_event_lands_on_the_topic_in_canonical_form(client, tail):
    item = event(user_id="alice", emoji_type="🎉")
    response = post(client, "/emoji", item)
    assert response.status_code == 200
    assert response.get_json() == {"status": "success"}
    [(_, key, value, _)] = tail()
    assert key is None
    assert json.loads(value) == canonical(item)
    assert value == encode(canonical(item))
    assert canonical(item)["timestamp"].endswith("Z")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          None])
def test_content_type_does_not_matter_when_the_body_is_json(client, tail, content_type):
    item = event(user_id=f"ct-{content_type}")
    response = post(client, "/emoji", item, content_type=content_type)
    assert response.status_code == 200, response.get_json()
    assert values(tail()) == [encode(canonical(item))]


def test_epoch_milliseconds_and_unicode_user_ids(client, tail):
    moment = moment_ago(-1.5)
    item = {"user_id": "Zoë 用户", "emoji_type": "❤️", "timestamp": round(moment.timestamp() * 1000)}
    assert post(client, "/emoji", item).status_code == 200
    [(_, key, value, _)] = tail()
    assert key is None
    assert json.loads(value) == {"user_id": "Zoë 用户", "emoji_type": "❤️",
                                 "timestamp": format_timestamp(moment), "stream_id": "main"}


@pytest.mark.parametrize("seconds_ago", [3600, -3600])
def test_far_off_timestamps_become_the_receive_time(client, tail, seconds_ago):
    before = moment_ago(0)
    assert post(client, "/emoji", event(seconds_ago=seconds_ago)).status_code == 200
    after = datetime.now(UTC)
    [(_, _, value, _)] = tail()
    stamped = datetime.fromisoformat(json.loads(value)["timestamp"])
    assert before <= stamped <= after


def test_batch_accepts_the_valid_and_reports_the_invalid_by_index(client, tail):
    emojis = ["😀", "🔥", "🎉", "👏"]
    items = [event(user_id=f"batch-user-{i % 7}", emoji_type=emojis[i % 4]) for i in range(50)]
    items[3] = {"user_id": "x", "timestamp": items[3]["timestamp"]}
    items[10] = 5
    items[20] = event(emoji_type="🍕")
    items[33] = event(user_id="bad\nid")
    items[49] = event(user_id="")
    response = post(client, "/emojis", items)
    assert response.status_code == 200
    allowed = "😀, 😍, 🎉, 👏, ❤️, 🏏, 🎯, 🔥, 😂, 😮, 😢, 😡"
    assert response.get_json() == {"status": "success", "accepted": 45, "rejected": [
        {"index": 3, "error": "missing field(s): emoji_type"},
        {"index": 10, "error": "an event must be a JSON object, got number"},
        {"index": 20, "error": f"emoji_type '🍕' is not one of the allowed emojis: {allowed}"},
        {"index": 33, "error": "user_id must not contain control characters"},
        {"index": 49, "error": "user_id must not be empty"}]}
    valid = [item for i, item in enumerate(items) if i not in (3, 10, 20, 33, 49)]
    records = tail()
    assert values(records) == sorted(encode(canonical(item)) for item in valid)
    # One request's events travel together: one record, a JSON array, in the order sent.
    [(_, key, value, _)] = records
    assert key is None and value.startswith(b"[")
    assert json.loads(value) == [canonical(item) for item in valid]


def test_events_are_coalesced_into_records_of_at_most_the_configured_size(settings, app, tail):
    small = dataclasses.replace(settings, producer_events_per_record=10)
    sink = KafkaEventSink(small)
    client = create_app(small, sink=sink, streams=app.extensions[STREAMS]).test_client()
    before = int(time.time() * 1000)
    items = [event(user_id=f"coalesced-{i}") for i in range(25)]
    try:
        assert post(client, "/emojis", items[:12]).status_code == 200
        for item in items[12:]:
            assert post(client, "/emoji", item).status_code == 200
        sink.flush(10)
    finally:
        sink.close(5)
    after = int(time.time() * 1000)
    records = tail()
    assert values(records) == sorted(encode(canonical(item)) for item in items)
    sizes = sorted(len(events_of(value)) for _, _, value, _ in records)
    assert sum(sizes) == 25 and max(sizes) <= 10 and len(sizes) >= 3
    # A record's time is when the API received its earliest event.
    assert all(before <= timestamp <= after for _, _, _, timestamp in records)


def test_batch_of_only_invalid_events_is_a_400_and_sends_nothing(client, tail):
    response = post(client, "/emojis", [{"user_id": "a"}, event(timestamp="soon")])
    assert response.status_code == 400
    assert response.get_json() == {
        "status": "error", "accepted": 0, "error": "none of the 2 events is valid",
        "rejected": [{"index": 0, "error": "missing field(s): emoji_type, timestamp"},
                     {"index": 1, "error": "timestamp 'soon' is not ISO-8601"}]}
    assert tail() == []


# --- streams ---------------------------------------------------------------------------------

def unknown(stream_id: str) -> str:
    return (f"unknown stream_id {stream_id!r}: GET /streams on the registration API lists the "
            "live streams")


def test_each_event_carries_its_stream_and_main_is_the_default(client, tail):
    items = [event(user_id="fan-1"), event(user_id="fan-2", stream_id="final-2026"),
             event(user_id="fan-3", stream_id="main")]
    assert post(client, "/emoji", items[0]).status_code == 200
    assert post(client, "/emojis", items[1:]).get_json() == {
        "status": "success", "accepted": 2, "rejected": []}
    streams = sorted((e["user_id"], e["stream_id"]) for _, _, value, _ in tail()
                     for e in events_of(value))
    assert streams == [("fan-1", "main"), ("fan-2", "final-2026"), ("fan-3", "main")]


def test_an_event_for_an_unknown_stream_is_a_404_and_reaches_no_topic(client, tail):
    response = post(client, "/emoji", event(stream_id="semi-final"))
    assert (response.status_code, response.get_json()) == (404, {"error": unknown("semi-final")})
    malformed = post(client, "/emoji", event(stream_id="semi final"))
    assert (malformed.status_code, malformed.get_json()) == (400, {
        "error": "stream_id must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', "
                 'got "semi final"'})
    assert tail() == []


def test_a_batch_reports_unknown_streams_by_index_and_keeps_the_rest(client, tail):
    items = [event(user_id="kept-1"), event(stream_id="nope"), event(user_id="kept-2",
                                                                     stream_id="final-2026")]
    response = post(client, "/emojis", items)
    assert (response.status_code, response.get_json()) == (200, {
        "status": "success", "accepted": 2, "rejected": [{"index": 1, "error": unknown("nope")}]})
    assert values(tail()) == sorted(encode(canonical(item)) for item in (items[0], items[2]))


def test_a_batch_of_only_unknown_streams_is_a_404_and_a_mixed_failure_a_400(client, tail):
    only_unknown = post(client, "/emojis", [event(stream_id="x1"), event(stream_id="x2")])
    assert (only_unknown.status_code, only_unknown.get_json()) == (404, {
        "status": "error", "accepted": 0, "error": "none of the 2 events is valid",
        "rejected": [{"index": 0, "error": unknown("x1")}, {"index": 1, "error": unknown("x2")}]})
    mixed = post(client, "/emojis", [event(stream_id="x1"), {"user_id": "a"}])
    assert mixed.status_code == 400 and mixed.get_json()["accepted"] == 0
    assert tail() == []


def test_a_stream_added_at_run_time_is_accepted_within_5_seconds(settings, client, tail):
    stream_id = f"added-{uuid.uuid4().hex[:8]}"
    assert post(client, "/emoji", event(stream_id=stream_id)).status_code == 404
    writer = StreamWriter(settings)
    try:
        writer.add(stream_id)
        added_at = time.monotonic()
        while post(client, "/emoji", event(user_id="early", stream_id=stream_id)).status_code \
                == 404:
            assert time.monotonic() - added_at < 5, "the new stream was not accepted within 5 s"
            time.sleep(0.05)
        assert [(e["user_id"], e["stream_id"]) for _, _, value, _ in tail()
                for e in events_of(value)] == [("early", stream_id)]
        writer.remove(stream_id)
        removed_at = time.monotonic()
        while post(client, "/emoji", event(stream_id=stream_id)).status_code == 200:
            assert time.monotonic() - removed_at < 5, "the removed stream was still accepted"
            time.sleep(0.05)
    finally:
        writer.close()


# --- rejected requests ----------------------------------------------------------------------

NOT_JSON = "body is not valid JSON"
BAD_REQUESTS = [
    ("/emoji", b"not json", NOT_JSON),
    ("/emoji", b"", NOT_JSON),
    ("/emoji", b"\xff\xfe{", NOT_JSON),
    ("/emoji", b'{"user_id": "a", "emoji_type": "\xf0\x9f", "timestamp": 1}', NOT_JSON),
    ("/emoji", b'{"user_id": "a", "emoji_type": "\xf0\x9f\x94\xa5", "timestamp": NaN}',
     NOT_JSON),
    ("/emoji", b'{"user_id": "a", "emoji_type": "\xf0\x9f\x94\xa5", "timestamp": Infinity}',
     NOT_JSON),
    ("/emoji", b"[" * 100_000, NOT_JSON),
    ("/emoji", b"[]", "an event must be a JSON object, got array"),
    ("/emoji", b"null", "an event must be a JSON object, got null"),
    ("/emoji", b'"\xf0\x9f\x94\xa5"', "an event must be a JSON object, got string"),
    ("/emoji", {}, "missing field(s): user_id, emoji_type, timestamp"),
    ("/emoji", {"user_id": "a", "emoji_type": "🔥"}, "missing field(s): timestamp"),
    ("/emoji", event(user_id=5), "user_id must be a string, got number"),
    ("/emoji", event(user_id=""), "user_id must not be empty"),
    ("/emoji", event(user_id="u" * 65), "user_id is longer than 64 characters"),
    ("/emoji", event(user_id="a\x00b"), "user_id must not contain control characters"),
    ("/emoji", event(user_id="a\u200bb"), "user_id must not contain control characters"),
    ("/emoji", b'{"user_id": "\\ud800", "emoji_type": "\xf0\x9f\x94\xa5", "timestamp": 1}',
     "user_id must not contain control characters"),
    ("/emoji", event(emoji_type="🍕"), "emoji_type '🍕' is not one of the allowed emojis: "
                                       "😀, 😍, 🎉, 👏, ❤️, 🏏, 🎯, 🔥, 😂, 😮, 😢, 😡"),
    ("/emoji", event(emoji_type=None), "emoji_type must be a string, got null"),
    ("/emoji", event(timestamp="yesterday"), "timestamp 'yesterday' is not ISO-8601"),
    ("/emoji", event(timestamp=True),
     "timestamp must be an ISO-8601 string or epoch milliseconds, got true"),
    ("/emoji", event(timestamp=1e300), "timestamp 1e+300 is out of range"),
    ("/emojis", b"not json", NOT_JSON),
    ("/emojis", event(), "body must be a JSON array of events"),
    ("/emojis", b"7", "body must be a JSON array of events"),
    ("/emojis", [], "empty batch"),
]


@pytest.mark.parametrize("path, body, message", BAD_REQUESTS)
def test_bad_input_is_a_400_naming_the_problem_and_reaches_no_topic(client, tail, path, body,
                                                                    message):
    response = post(client, path, body)
    assert response.status_code == 400
    assert response.get_json() == {"error": message}
    assert tail() == []


@pytest.fixture
def small_app(settings, app):
    """The module app's limits made small; shares its sink."""
    small = dataclasses.replace(settings, api_max_batch=3, api_max_body_bytes=1000)
    return create_app(small, sink=app.extensions[SINK], streams=app.extensions[STREAMS])


def test_batch_over_the_limit_is_a_413_and_sends_nothing(small_app, tail):
    response = post(small_app.test_client(), "/emojis", [event() for _ in range(4)])
    assert response.status_code == 413
    assert response.get_json() == {"error": "batch has 4 events; at most 3 are allowed"}
    assert tail() == []


def test_batch_at_the_limit_is_accepted(small_app, tail):
    items = [event(user_id=f"limit-{i}") for i in range(3)]
    response = post(small_app.test_client(), "/emojis", items)
    assert response.get_json() == {"status": "success", "accepted": 3, "rejected": []}
    assert values(tail()) == sorted(encode(canonical(item)) for item in items)


def padded(item: dict, size: int) -> bytes:
    body = json.dumps(item).encode("utf-8")
    return body + b" " * (size - len(body))


def test_body_of_exactly_the_limit_is_accepted_one_byte_more_is_a_413(small_app, tail):
    client = small_app.test_client()
    item = event(user_id="size-limit")
    too_big = post(client, "/emoji", padded(item, 1001))
    assert too_big.status_code == 413
    assert too_big.get_json() == {"error": "body is larger than 1000 bytes"}
    assert post(client, "/emoji", padded(item, 1000)).status_code == 200
    assert values(tail()) == [encode(canonical(item))]


def test_default_body_limit_is_2_mib(client, tail):
    response = post(client, "/emojis", b"[" + b" " * (2 * 1024 * 1024) + b"]")
    assert response.status_code == 413
    assert response.get_json() == {"error": "body is larger than 2097152 bytes"}
    assert tail() == []


def test_unknown_path_is_a_json_404(client):
    response = client.post("/emoji/extra", json=event())
    assert response.status_code == 404
    assert response.get_json() == {"error": "no such endpoint: /emoji/extra "
                                            "(there are POST /emoji, POST /emojis, GET /health, "
                                            "GET /metrics and GET /openapi.json)"}


@pytest.mark.parametrize("method, path, allowed", [("GET", "/emoji", "OPTIONS, POST"),
                                                   ("PUT", "/emojis", "OPTIONS, POST"),
                                                   ("POST", "/health", "GET, HEAD, OPTIONS")])
def test_wrong_method_is_a_json_405_with_allow_header(client, method, path, allowed):
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert response.get_json() == {"error": f"{method} is not allowed on {path}; use {allowed}"}
    assert response.headers["Allow"] == allowed


def test_health_is_ok_while_kafka_takes_records(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


# --- Kafka unavailable ----------------------------------------------------------------------

def test_unreachable_kafka_is_a_503_and_never_a_hang(test_env):
    port = free_port()
    settings = config.load(dict(test_env, KAFKA_BOOTSTRAP_SERVERS=f"localhost:{port}"))
    sink = KafkaEventSink(settings, connect_timeout_s=1)
    client = create_app(settings, sink=sink, streams=StreamCatalog(settings)).test_client()
    expected = {"error": f"Kafka is unavailable (Kafka is not reachable at localhost:{port} "
                         "(KafkaTimeoutError); is it running? (scripts/kafka.sh status)); "
                         "try again shortly"}

    started = time.monotonic()
    first = post(client, "/emoji", event())
    assert time.monotonic() - started < 5
    assert first.status_code == 503
    assert first.get_json() == expected
    assert first.headers["Retry-After"] == "1"

    started = time.monotonic()
    again = post(client, "/emojis", [event()])
    assert time.monotonic() - started < 0.5, "a failed connect is not retried per request"
    assert (again.status_code, again.get_json()) == (503, expected)
    health = client.get("/health")
    assert (health.status_code, health.get_json()) == (503, expected)
    bad = post(client, "/emoji", event(user_id=""))
    assert (bad.status_code, bad.get_json()) == (400, {"error": "user_id must not be empty"})
    sink.close(1)


@pytest.fixture(scope="module")
def outage_broker(test_env, tmp_path_factory):
    """A broker of its own that tests may stop; each test leaves it running."""
    env = dict(test_env, VAR_DIR=str(tmp_path_factory.mktemp("outage")),
               KAFKA_PORT=str(free_port()), KAFKA_CONTROLLER_PORT=str(free_port()),
               KAFKA_METRICS_PORT=str(free_port()))
    started = run_script("kafka.sh", "start", env=env, check=False)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield env
    finally:
        run_script("kafka.sh", "stop", env=env, check=False)


def post_until(client, status: int, accepted: list, timeout_s: float):
    """POST fresh events until one is answered with ``status``; collects the accepted ones."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        item = event(user_id=f"outage-{uuid.uuid4().hex[:8]}")
        response = post(client, "/emoji", item)
        if response.status_code == 200:
            accepted.append(item)
        if response.status_code == status:
            return response
        time.sleep(0.2)
    pytest.fail(f"no {status} within {timeout_s} s")


def test_kafka_outage_turns_into_503s_and_loses_nothing_answered_200(outage_broker):
    topic = unique_topic("outage-events")
    env = dict(outage_broker, EMOJI_EVENTS_TOPIC=topic, PRODUCER_ACK_TIMEOUT_S="2")
    settings = config.load(env)
    create_topic(settings, topic, 2)
    app = create_app(settings, streams=StreamCatalog(settings))
    sink, client = app.extensions[SINK], app.test_client()
    accepted = []
    try:
        post_until(client, 200, accepted, timeout_s=10)
        sink.flush(10)
        run_script("kafka.sh", "stop", env=env)

        refused = post_until(client, 503, accepted, timeout_s=15)
        assert refused.get_json()["error"].startswith(
            "Kafka is unavailable (no acknowledgement for ")
        assert client.get("/health").status_code == 503
        assert len(accepted) >= 2, "events accepted before the outage was noticed"

        run_script("kafka.sh", "start", env=env)
        post_until(client, 200, accepted, timeout_s=60)
        assert client.get("/health").status_code == 200
        sink.flush(30)
    finally:
        sink.close(5)
    tail = TopicTail(settings, topic, from_beginning=True)
    records = tail.records()
    tail.close()
    assert values(records) == sorted(encode(canonical(item)) for item in accepted)


def test_after_a_long_outage_503_until_kafka_is_back(outage_broker):
    """Records that outlive INGEST_DELIVERY_TIMEOUT_S (30 s; 5.5 s here, of which the
    producer's delivery timeout is 4 s) fail; the sink then answers 503 with nothing in flight,
    and must notice by itself when Kafka is back."""
    topic = unique_topic("long-outage-events")
    env = dict(outage_broker, EMOJI_EVENTS_TOPIC=topic, PRODUCER_ACK_TIMEOUT_S="1",
               INGEST_DELIVERY_TIMEOUT_S="5.5")
    settings = config.load(env)
    create_topic(settings, topic, 1)
    sink = KafkaEventSink(settings)
    assert sink.producer_options()["delivery_timeout_ms"] == 4070
    assert sink.producer_options()["request_timeout_ms"] == 1356
    client = create_app(settings, sink=sink, streams=StreamCatalog(settings)).test_client()
    before, during, after = [], [], []
    try:
        post_until(client, 200, before, timeout_s=10)
        sink.flush(10)
        run_script("kafka.sh", "stop", env=env)
        post_until(client, 503, during, timeout_s=15)
        time.sleep(5)
        refused = post(client, "/emoji", event())
        assert refused.status_code == 503
        assert refused.get_json()["error"].startswith(
            "Kafka is unavailable (a delivery failed: KafkaTimeoutError: Expiring ")
        assert sink.problem().startswith("a delivery failed: ")

        run_script("kafka.sh", "start", env=env)
        post_until(client, 200, after, timeout_s=60)
        sink.flush(10)
    finally:
        sink.close(5)
    tail = TopicTail(settings, topic, from_beginning=True)
    records = tail.records()
    tail.close()
    assert during, "at least the event that started the wait was accepted"
    assert values(records) == sorted(encode(canonical(item)) for item in before + after)


# --- the script -----------------------------------------------------------------------------

def run_api(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "emoji_api.py"), *args], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def test_help_exits_0():
    result = run_api("--help", env={})
    assert result.returncode == 0
    assert "--port" in result.stdout and "--workers" in result.stdout


def test_script_says_in_one_line_when_kafka_is_down(test_env):
    result = run_api(env=dict(test_env, KAFKA_BOOTSTRAP_SERVERS="localhost:1"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Kafka is not reachable at localhost:1" in lines[0]
    assert "Traceback" not in result.stderr


def test_script_refuses_to_start_without_its_topic(kafka, test_env):
    result = run_api(env=dict(test_env, EMOJI_EVENTS_TOPIC="no-such-topic"))
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"topic no-such-topic does not exist at {kafka.kafka_bootstrap_servers}; "
        "run scripts/create_topics.sh")


def test_script_rejects_an_unknown_compression(test_env):
    result = run_api(env=dict(test_env, PRODUCER_COMPRESSION="brotli"))
    assert result.returncode == 2
    assert "PRODUCER_COMPRESSION must be one of none, gzip, snappy, lz4, zstd; got 'brotli'" \
        in result.stderr


def wait_for_health(url: str, process: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the API exited during start-up"
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer 200 within {timeout_s} s")


def test_script_serves_with_granian_and_delivers_everything_on_sigterm(kafka, test_env,
                                                                        tmp_path):
    topic = unique_topic("script-events")
    create_topic(kafka, topic, 4)
    tail = TopicTail(kafka, topic)
    port = free_port()
    # A linger longer than the test: only the flush when a worker exits can deliver the events.
    env = dict(test_env, EMOJI_EVENTS_TOPIC=topic, API_WORKERS="2", PRODUCER_LINGER_MS="30000")
    base = f"http://localhost:{port}"
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen([sys.executable, str(REPO_ROOT / "emoji_api.py"),
                                    "--port", str(port)], env=env, cwd=REPO_ROOT,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for_health(f"{base}/health", process)
        single = event(user_id="script-single")
        batch = [event(user_id=f"script-{i}", emoji_type="👏") for i in range(20)]
        answer = requests.post(f"{base}/emoji", json=single, timeout=5)
        assert (answer.status_code, answer.json()) == (200, {"status": "success"})
        answer = requests.post(f"{base}/emojis", json=batch, timeout=5)
        assert answer.json() == {"status": "success", "accepted": 20, "rejected": []}
        bad = requests.post(f"{base}/emoji", data=b"{", timeout=5)
        assert (bad.status_code, bad.json()) == (400, {"error": "body is not valid JSON"})
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    records = tail.records()
    tail.close()
    assert values(records) == sorted(encode(canonical(item)) for item in [single, *batch])
    log = stderr_path.read_text()
    assert "Traceback" not in log
    assert "_granian: Spawning worker-1 with PID" in log
    assert "_granian: Spawning worker-2 with PID" in log
    assert log.count("emojistream.ingest.sink: producer closed; 0 event(s) lost since start") == 2
    assert all(LOG_LINE.match(line) for line in log.splitlines()), log
