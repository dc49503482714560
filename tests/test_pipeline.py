"""End to end: the whole system started by scripts/start_all.sh on its own Kafka and ports.

Viewers register, connect to their clusters' WebSocket servers, and must receive for a window
exactly the counts of the emojis sent into it through both ingest endpoints, however the events
were split over users, requests and late arrivals; malformed and untimely records written
straight into the events topic are skipped without stopping the aggregator or its counting.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from websockets.sync.client import connect

from emojistream import config
from emojistream.common import kafka_clients
from emojistream.common.events import encode, format_timestamp, window_bounds
from testkit.processes import component_status
from tests.services import OTHER_STREAM

pytestmark = pytest.mark.stack

UNIQUE_USERS_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def system(whole_system):
    return whole_system[1]


class Viewer:
    """A registered viewer whose WebSocket messages are collected by a thread."""

    def __init__(self, settings, client_id: str, stream_id: str | None = None):
        url = f"http://{settings.registration_host}:{settings.registration_port}/register"
        body = {"client_id": client_id} if stream_id is None else {"client_id": client_id,
                                                                   "stream_id": stream_id}
        answer = requests.post(url, json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        self.assignment = answer.json()
        assert self.assignment["stream_id"] == (stream_id or "main")
        self.messages: list[dict] = []
        self._resources = ExitStack()
        self.socket = self._resources.enter_context(
            connect(self.assignment["subscriber_endpoint"], open_timeout=10))
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self):
        for text in self.socket:
            self.messages.append(json.loads(text))

    def last_for(self, window_start: str) -> dict | None:
        matching = [m for m in self.messages if m["window_start"] == window_start]
        return matching[-1] if matching else None

    def close(self):
        self._resources.close()
        self.thread.join(timeout=5)


def counts_of(message: dict | None) -> dict[str, int]:
    if message is None:
        return {}
    return {a["emoji_type"]: a["count"] for a in message["aggregates"]}


def wait_for(condition, timeout_s: float, interval_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


def post_single(settings, events):
    url = f"http://{settings.api_host}:{settings.api_port}/emoji"
    with requests.Session() as session:
        for event in events:
            answer = session.post(url, json=event, timeout=10)
            assert (answer.status_code, answer.json()) == (200, {"status": "success"})


def post_batch(settings, events):
    url = f"http://{settings.api_host}:{settings.api_port}/emojis"
    answer = requests.post(url, json=events, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "success", "accepted": len(events), "rejected": []}


def event(user: str, emoji: str, moment: datetime, stream_id: str | None = None) -> dict:
    """An event; without ``stream_id`` it names none, as the original protocol (main)."""
    body = {"user_id": user, "emoji_type": emoji, "timestamp": format_timestamp(moment)}
    return body if stream_id is None else dict(body, stream_id=stream_id)


def next_window_start(settings) -> datetime:
    """The start of the next window, waited for, so a whole window lies ahead."""
    now = datetime.now(UTC)
    start, end = window_bounds(now, settings.window_seconds)
    time.sleep((end - now).total_seconds())
    return end


def test_viewers_receive_exact_window_counts(system):
    viewers = [Viewer(system, f"e2e-viewer-{i}") for i in range(system.cluster_count)]
    try:
        assert sorted(v.assignment["cluster_id"] for v in viewers) == [
            f"cluster{n}" for n in system.clusters]

        window_start = next_window_start(system)
        inside = window_start + timedelta(milliseconds=700)
        fire = [event(f"fan-{i % 60}", "🔥", inside) for i in range(150)]
        laugh = [event(f"laugh-{i}", "😂", inside) for i in range(25)]
        clap = [event(f"clap-{i % 5}", "👏", inside) for i in range(19)]
        party = [event("party-1", "🎉", inside)]
        post_batch(system, fire)
        post_single(system, laugh + party)
        post_batch(system, clap)
        poison = [b"\xff\xfe not json", b"[1, 2, 3]",
                  encode(event("x", "🍕", inside)), encode(event("", "🔥", inside)),
                  encode({"user_id": "y", "emoji_type": "🔥", "timestamp": "yesterday"})]
        producer = kafka_clients.producer(system)
        for record in poison:
            producer.send(system.emoji_events_topic, record)
        producer.flush()

        key = format_timestamp(window_start)
        expected = {"🔥": 150, "😂": 25, "👏": 19, "🎉": 1}
        assert wait_for(lambda: all(counts_of(v.last_for(key)) == expected for v in viewers),
                        timeout_s=90), [counts_of(v.last_for(key)) for v in viewers]

        # A late event, delivered after its window has been reported but within the watermark,
        # still counts: the window is sent again with it. (Its record carries the time it was
        # accepted, as a record the API's producer delivers late after an outage does.)
        late = [event("late-1", "🎯", inside), event("late-2", "🎯", inside)]
        for record in late:
            producer.send(system.emoji_events_topic, encode(record),
                          timestamp_ms=int(inside.timestamp() * 1000))
        producer.flush()
        producer.close()
        expected["🎯"] = 2
        assert wait_for(lambda: all(counts_of(v.last_for(key)) == expected for v in viewers),
                        timeout_s=60), [counts_of(v.last_for(key)) for v in viewers]
        time.sleep(system.watermark_delay_s)

        distinct_users = {"🔥": 60, "😂": 25, "👏": 5, "🎉": 1, "🎯": 2}
        for viewer in viewers:
            final = viewer.last_for(key)
            assert final["window_end"] == format_timestamp(
                window_start + timedelta(seconds=system.window_seconds))
            by_emoji = {a["emoji_type"]: a for a in final["aggregates"]}
            assert {e: a["count"] for e, a in by_emoji.items()} == expected
            assert {e: a["normalized_count"] for e, a in by_emoji.items()} == {
                "🔥": 2, "😂": 1, "👏": 0, "🎉": 0, "🎯": 0}
            for emoji, users in distinct_users.items():
                assert abs(by_emoji[emoji]["unique_users"] - users) <= math.ceil(
                    users * UNIQUE_USERS_TOLERANCE), (emoji, by_emoji[emoji])
            # Presence: one viewer on each cluster's server, each counting the others'.
            assert final["watching"] == len(viewers), final
    finally:
        for viewer in viewers:
            viewer.close()


def test_two_streams_in_the_same_window_each_get_their_own_exact_counts(system):
    main_viewers = [Viewer(system, f"main-viewer-{i}", "main") for i in range(2)]
    final_viewers = [Viewer(system, f"final-viewer-{i}", OTHER_STREAM) for i in range(2)]
    viewers = main_viewers + final_viewers
    try:
        window_start = next_window_start(system)
        inside = window_start + timedelta(milliseconds=700)
        post_batch(system, [event(f"m-{i % 9}", "🔥", inside, "main") for i in range(40)]
                   + [event(f"m-{i}", "😂", inside) for i in range(10)])  # main by default
        post_batch(system, [event(f"f-{i % 3}", "🔥", inside, OTHER_STREAM) for i in range(7)]
                   + [event(f"f-{i}", "🏏", inside, OTHER_STREAM) for i in range(33)])
        post_single(system, [event("f-solo", "🏏", inside, OTHER_STREAM)])

        key = format_timestamp(window_start)
        expected = {"main": {"🔥": 40, "😂": 10}, OTHER_STREAM: {"🔥": 7, "🏏": 34}}
        for stream_id, watching in (("main", main_viewers), (OTHER_STREAM, final_viewers)):
            assert wait_for(lambda w=watching, s=stream_id: all(
                counts_of(v.last_for(key)) == expected[s] for v in w), timeout_s=90), \
                (stream_id, [counts_of(v.last_for(key)) for v in watching])
        time.sleep(system.window_seconds)  # an update of another stream would have come by now
        for stream_id, watching in (("main", main_viewers), (OTHER_STREAM, final_viewers)):
            for viewer in watching:
                assert {m["stream_id"] for m in viewer.messages} == {stream_id}
                assert all(list(m)[0] == "stream_id" for m in viewer.messages)
                users = {a["emoji_type"]: a["unique_users"]
                         for a in viewer.last_for(key)["aggregates"]}
                distinct = {"🔥": 9, "😂": 10} if stream_id == "main" else {"🔥": 3, "🏏": 34}
                assert users.keys() == distinct.keys()
                for emoji, count in distinct.items():
                    assert abs(users[emoji] - count) <= math.ceil(
                        count * UNIQUE_USERS_TOLERANCE), (stream_id, emoji, users)
    finally:
        for viewer in viewers:
            viewer.close()


def skipped_so_far(settings) -> int:
    """Records the aggregator has logged as skipped."""
    log = Path(settings.var_dir) / "logs" / "spark_aggregator.log"
    return sum(int(line.split("skipped ")[1].split()[0])
               for line in log.read_text().splitlines() if "not valid events" in line)


def test_malformed_records_neither_stop_nor_count(system):
    skipped_before = skipped_so_far(system)
    viewer = Viewer(system, "e2e-poison-watcher")
    try:
        producer = kafka_clients.producer(system)
        # First the poison, each skipped as one event: unreadable records, a malformed array,
        # an event from the year 9999 (it would move the watermark past every later event), and
        # the records of a producer whose clock is 30 minutes ahead (record and event agree).
        ahead = datetime.now(UTC) + timedelta(minutes=30)
        for record in (b"\x00\x01 random bytes", b'{"user_id": 7}', b"x" * 200_000,
                       b'[{"user_id": "u", "emoji_type": "\xf0\x9f\x94\xa5"}, 7]',
                       b'{"user_id":"x","emoji_type":"\xf0\x9f\x94\xa5",'
                       b'"timestamp":"9999-01-01T00:00:00.000Z"}'):
            producer.send(system.emoji_events_topic, record)
        producer.send(system.emoji_events_topic, encode(event("early-bird", "😮", ahead)),
                      timestamp_ms=int(ahead.timestamp() * 1000))
        producer.flush()
        assert wait_for(lambda: skipped_so_far(system) == skipped_before + 6, timeout_s=60), \
            skipped_so_far(system) - skipped_before

        # Then an event in the array form, counted in its window.
        window_start = next_window_start(system)
        inside = window_start + timedelta(milliseconds=500)
        producer.send(system.emoji_events_topic,
                      encode([event("ok-1", "😮", inside), event("ok-2", "😮", inside)]))
        producer.flush()
        producer.close()
        key = format_timestamp(window_start)
        assert wait_for(lambda: counts_of(viewer.last_for(key)) == {"😮": 2}, timeout_s=90), \
            viewer.messages[-3:]
        assert skipped_so_far(system) == skipped_before + 6
        env = {**os.environ, **config.to_environment(system)}
        aggregator = component_status(env)["spark_aggregator"]
        assert (aggregator["state"], aggregator["restarts"]) == ("up", 0)
    finally:
        viewer.close()
