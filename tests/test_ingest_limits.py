"""The ingest API's per-client limits against a real Kafka broker: the events bucket of a client
address (429 with Retry-After, 413 beyond the burst), and API_REQUIRE_TOKEN (401 without a viewer
token, the user id taken from the token, a rate per viewer). What it answered 200 for, and only
that, reaches the topic."""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from emojistream import config
from emojistream.common import metrics as common_metrics
from emojistream.common import secrets as installation_secrets
from emojistream.common import tokens
from emojistream.common.events import format_timestamp
from emojistream.ingest.app import METRICS, SINK, STREAMS, create_app
from testkit.topics import events_of
from tests.test_emoji_api import TopicTail, create_topic, unique_topic
from tests.test_metrics import value

pytestmark = pytest.mark.kafka

SECRET = "s" * 43


@pytest.fixture(scope="module")
def base(kafka, test_env):
    topic, streams_topic = unique_topic("limits-events"), unique_topic("limits-streams")
    create_topic(kafka, topic, 1)
    create_topic(kafka, streams_topic, 1)
    return config.load(dict(test_env, EMOJI_EVENTS_TOPIC=topic, STREAMS_TOPIC=streams_topic))


@contextmanager
def api(settings, **limits):
    """An app of these limits, and a function giving the users whose events reached the topic
    since it started (after its producer delivered everything)."""
    app = create_app(dataclasses.replace(settings, **limits), token_secret=SECRET)
    tail = TopicTail(settings, settings.emoji_events_topic)

    def landed() -> list[str]:
        app.extensions[SINK].flush(10)
        return sorted(e["user_id"] for _, _, v, _ in tail.records() for e in events_of(v))

    try:
        yield app, landed
    finally:
        tail.close()
        app.extensions[SINK].close(10)
        app.extensions[STREAMS].stop()


def now_event(user: str) -> dict:
    return {"user_id": user, "emoji_type": "🔥",
            "timestamp": format_timestamp(datetime.now(UTC))}


def client_at(app, address: str):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def refused(app, reason: str) -> float:
    text = common_metrics.exposition(app.extensions[METRICS].registry)[0].decode()
    return value(text, "emojistream_api_events_refused_total", reason=reason)


def test_each_address_has_a_bucket_of_events(base):
    with api(base, api_events_burst_per_address=25, api_events_per_s_per_address=0.0001) as (
            app, landed):
        one, other = client_at(app, "127.0.0.2"), client_at(app, "127.0.0.3")
        batch = [now_event(f"a{i}") for i in range(10)]
        assert one.post("/emojis", json=batch).json["accepted"] == 10
        assert one.post("/emojis", json=[now_event(f"b{i}") for i in range(10)]).status_code == 200
        # 5 events left: a batch of 10 is refused whole, sends nothing, and says when to retry.
        answer = one.post("/emojis", json=[now_event(f"c{i}") for i in range(10)])
        assert answer.status_code == 429
        assert answer.json["error"] == (
            "too many events from client address 127.0.0.2: at most 25 events at once and "
            "0.0001 a second (API_EVENTS_BURST_PER_ADDRESS, API_EVENTS_PER_S_PER_ADDRESS)")
        # (10 - 5) / 0.0001 s, less the refill of the test's few seconds
        assert 49_900 <= int(answer.headers["Retry-After"]) <= 50_000
        for i in range(5):
            assert one.post("/emoji", json=now_event(f"d{i}")).status_code == 200
        assert one.post("/emoji", json=now_event("d5")).status_code == 429
        # Another address has its own bucket; more than a burst at once could never pass: 413.
        assert other.post("/emojis", json=[now_event(f"e{i}") for i in range(25)]).json[
            "accepted"] == 25
        too_many = client_at(app, "127.0.0.4").post(
            "/emojis", json=[now_event(f"f{i}") for i in range(26)])
        assert too_many.status_code == 413
        assert "more than client address 127.0.0.4 may ever send at once" in too_many.json[
            "error"]
        assert refused(app, "rate_limited") == 11
        assert refused(app, "too_large") == 26
        assert landed() == sorted([f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)]
                                  + [f"d{i}" for i in range(5)] + [f"e{i}" for i in range(25)])


def test_a_bucket_refills_at_its_rate(base):
    with api(base, api_events_burst_per_address=4, api_events_per_s_per_address=10) as (
            app, landed):
        client = app.test_client()
        assert client.post("/emojis", json=[now_event(f"r{i}") for i in range(4)]).status_code \
            == 200
        answer = client.post("/emojis", json=[now_event(f"s{i}") for i in range(4)])
        assert answer.status_code == 429 and answer.headers["Retry-After"] == "1"
        time.sleep(0.45)  # 4 events at 10 a second
        assert client.post("/emojis", json=[now_event(f"t{i}") for i in range(4)]).status_code \
            == 200
        assert landed() == sorted([f"r{i}" for i in range(4)] + [f"t{i}" for i in range(4)])


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_with_api_require_token_only_viewers_send_as_themselves(base):
    now = time.time()
    with api(base, api_require_token=True, api_events_burst_per_viewer=5,
             api_events_per_s_per_viewer=0.0001) as (app, landed):
        client = app.test_client()
        missing = client.post("/emoji", json=now_event("nobody"))
        assert missing.status_code == 401
        assert missing.json["error"].startswith("missing token: send Authorization: Bearer")
        assert missing.headers["WWW-Authenticate"] == 'Bearer realm="emoji"'
        forged = tokens.issue("x" * 43, "viewer-7", 1, 60, now)
        assert client.post("/emoji", json=now_event("v"), headers=bearer(forged)).json == {
            "error": "invalid token"}
        expired = tokens.issue(SECRET, "viewer-7", 1, 60, now - 120)
        answer = client.post("/emojis", json=[now_event("v")], headers=bearer(expired))
        assert (answer.status_code, answer.json) == (401, {"error": "token expired"})

        seven = bearer(tokens.issue(SECRET, "viewer-7", 2, 60, now))
        eight = bearer(tokens.issue(SECRET, "viewer-8", 3, 60, now))
        # The user id is the token's, whatever the body says or leaves out.
        assert client.post("/emoji", json=now_event("someone-else"), headers=seven).json == {
            "status": "success"}
        unnamed = {k: v for k, v in now_event("x").items() if k != "user_id"}
        assert client.post("/emojis", json=[unnamed] * 4, headers=seven).json["accepted"] == 4
        # viewer-7 has spent its 5 events; viewer-8, from the same address, has its own.
        limited = client.post("/emoji", json=now_event("x"), headers=seven)
        assert limited.status_code == 429
        assert limited.json["error"].startswith("too many events from viewer 'viewer-7'")
        assert client.post("/emojis", json=[now_event("y")] * 5, headers=eight).json[
            "accepted"] == 5
        assert refused(app, "unauthorized") == 3
        assert refused(app, "rate_limited") == 1
        assert landed() == ["viewer-7"] * 5 + ["viewer-8"] * 5


def test_the_installations_token_secret_is_the_default(base, tmp_path):
    settings = dataclasses.replace(base, var_dir=str(tmp_path), api_require_token=True)
    secret = installation_secrets.all_secrets(settings)[installation_secrets.TOKEN_SECRET]
    app = create_app(settings)
    try:
        token = tokens.issue(secret, "viewer-9", 1, 60, time.time())
        assert app.test_client().post("/emoji", json=now_event("x"),
                                      headers=bearer(token)).status_code == 200
    finally:
        app.extensions[SINK].close(10)
        app.extensions[STREAMS].stop()
