"""A stream's history (GET /streams/ID/windows and /moments) and the moments rule: the pure
function, every bad parameter, Kafka away, and the reader on a real Kafka topic written as the
aggregator writes it (key STREAM/WINDOW_START, record time when written). The whole system,
through an aggregator restart: tests/test_faults.py."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from kafka.admin import ConfigResource, NewTopic

from emojistream import config
from emojistream.common import kafka_clients
from emojistream.common.events import format_timestamp
from emojistream.common.moments import is_moment, previous_totals, with_moment
from emojistream.common.streams import StreamCatalog
from emojistream.registration.app import create_app
from emojistream.registration.history import HistoryReader
from tests.services import free_port, run_script
from tests.test_registration_api import ENV, FakeHealth

# --- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("total, previous, expected", [
    (31, [10, 10, 10, 10, 10], True),        # above 3 x 10
    (30, [10, 10, 10, 10, 10], False),       # exactly 3 x the median is not above it
    (100, [10, 10, 10, 10], False),          # fewer than 5 windows before it
    (100, [], False),
    (34, [1, 2, 11, 11, 11, 500], True),     # the median (11), not the mean, of the minute
    (33, [1, 2, 11, 11, 11, 500], False),
    (32, [10, 11, 10, 11, 10, 11], True),    # median 10.5 of an even count: 31.5
])
def test_a_moment_exceeds_the_factor_times_the_median_of_enough_windows(total, previous,
                                                                         expected):
    assert is_moment(total, previous, factor=3, min_windows=5) is expected


def test_the_previous_minute_is_the_windows_that_start_in_the_60_s_before():
    totals = {100.0: 1, 102.0: 2, 158.0: 3, 160.0: 4, 162.0: 5}
    assert sorted(previous_totals(totals, 160.0, 60)) == [1, 2, 3]
    assert sorted(previous_totals(totals, 162.0, 60)) == [2, 3, 4]


def test_the_mark_is_the_last_member_of_the_update():
    assert with_moment(b'{"stream_id":"main","aggregates":[]}') == \
        b'{"stream_id":"main","aggregates":[],"moment":true}'


# --- the routes without Kafka -----------------------------------------------------------------

def history_app(**extra):
    settings = config.load({**ENV, "KAFKA_BOOTSTRAP_SERVERS": f"localhost:{free_port()}",
                            "HISTORY_KAFKA_TIMEOUT_S": "0.5", **extra})
    app = create_app(settings, poll=False, streams=StreamCatalog(settings), probe=FakeHealth())
    return app.test_client()


@pytest.fixture(scope="module")
def client():
    return history_app()


@pytest.mark.parametrize("path, error", [
    ("/streams/main/windows?from=yesterday",
     "from must be an ISO-8601 time like 2026-12-05T08:42:26.000Z (URL-encoded), got "
     "'yesterday'"),
    ("/streams/main/windows?from=2026-12-05T08:00:00Z&to=",
     "to must be an ISO-8601 time like 2026-12-05T08:42:26.000Z (URL-encoded), got ''"),
    ("/streams/main/moments?from=2026-12-05T08:10:00Z&to=2026-12-05T08:00:00Z",
     "from (2026-12-05T08:10:00.000Z) must be before to (2026-12-05T08:00:00.000Z)"),
    ("/streams/main/windows?from=2026-12-05T08:00:00Z&to=2026-12-05T08:00:00Z",
     "from (2026-12-05T08:00:00.000Z) must be before to (2026-12-05T08:00:00.000Z)"),
    ("/streams/main/windows?from=2026-12-05T08:00:00Z&to=2026-12-05T09:00:00.002Z",
     "from 2026-12-05T08:00:00.000Z to 2026-12-05T09:00:00.002Z is 3600.002 s; at most 3600 s "
     "(HISTORY_MAX_RANGE_S)"),
    ("/streams/main/windows?from=2026-12-05T07:00:00%2B01:00&to=2026-12-05T09:00:00Z",
     "from 2026-12-05T06:00:00.000Z to 2026-12-05T09:00:00.000Z is 10800 s; at most 3600 s "
     "(HISTORY_MAX_RANGE_S)"),
    ("/streams/main/windows?limit=0",
     "limit must be an integer from 1 to 1800 (HISTORY_MAX_LIMIT), got '0'"),
    ("/streams/main/windows?limit=1801",
     "limit must be an integer from 1 to 1800 (HISTORY_MAX_LIMIT), got '1801'"),
    ("/streams/main/moments?limit=-3",
     "limit must be an integer from 1 to 1800 (HISTORY_MAX_LIMIT), got '-3'"),
    ("/streams/main/windows?limit=ten",
     "limit must be an integer from 1 to 1800 (HISTORY_MAX_LIMIT), got 'ten'"),
    ("/streams/main/windows?since=2026-12-05T08:00:00Z",
     "unknown parameter 'since' (there are from, to and limit)"),
    ("/streams/a%20b/windows",
     "stream_id must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', got \"a b\""),
    (f"/streams/{'x' * 65}/moments",
     f"stream_id must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', got "
     f"\"{'x' * 65}\""),
])
def test_each_bad_parameter_is_a_400_naming_it(client, path, error):
    answer = client.get(path)
    assert (answer.status_code, answer.get_json()) == (400, {"error": error})


def test_an_unknown_stream_is_a_404(client):
    answer = client.get("/streams/nope/windows")
    assert (answer.status_code, answer.get_json()) == (404, {
        "error": "unknown stream_id 'nope': GET /streams on the registration API lists the "
                 "live streams"})


def test_the_bounds_are_settings():
    client = history_app(HISTORY_MAX_LIMIT="10", HISTORY_MAX_RANGE_S="60")
    assert client.get("/streams/main/windows?limit=11").get_json() == {
        "error": "limit must be an integer from 1 to 10 (HISTORY_MAX_LIMIT), got '11'"}
    assert client.get("/streams/main/moments?from=2026-12-05T07:58:59Z&to=2026-12-05T08:00:00Z"
                      ).get_json() == {
        "error": "from 2026-12-05T07:58:59.000Z to 2026-12-05T08:00:00.000Z is 61 s; at most "
                 "60 s (HISTORY_MAX_RANGE_S)"}


def test_kafka_away_is_a_503_with_a_clear_error(client):
    for path in ("/streams/main/windows", "/streams/final-2026/moments?limit=5"):
        answer = client.get(path)
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "1"
        error = answer.get_json()["error"]
        assert error.startswith("history unavailable: Kafka is not reachable at localhost:"), \
            error
        assert error.endswith("; is it running? (scripts/kafka.sh status)"), error


# --- the reader on a real Kafka ---------------------------------------------------------------

BASE = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


def window_update(stream_id: str, start: datetime, **counts) -> dict:
    return {"stream_id": stream_id, "window_start": format_timestamp(start),
            "window_end": format_timestamp(start + timedelta(seconds=2)),
            "aggregates": [{"emoji_type": emoji, "count": count, "normalized_count": 0,
                            "unique_users": 1} for emoji, count in counts.items()]}


def write(settings, records: list[tuple[dict | bytes, datetime]], key: str | None = None):
    """Each update keyed STREAM/WINDOW_START (as the aggregator writes it), its record time
    ``written``."""
    producer = kafka_clients.producer(settings, acks="all")
    try:
        for value, written in records:
            if isinstance(value, dict):
                record_key = f"{value['stream_id']}/{value['window_start']}"
                value = json.dumps(value, ensure_ascii=False).encode()
            else:
                record_key = key or "junk"
            producer.send(settings.aggregated_topic, key=record_key.encode(), value=value,
                          timestamp_ms=int(written.timestamp() * 1000))
        producer.flush()
    finally:
        producer.close()


@pytest.fixture
def history_settings(kafka, test_env):
    env = dict(test_env, AGGREGATED_TOPIC=f"history-{uuid.uuid4().hex[:8]}",
               STREAMS="main,final-2026")
    run_script("create_topics.sh", env=env)
    return config.load(env)


@pytest.mark.kafka
def test_the_reader_keeps_each_windows_last_version_in_the_range_oldest_first(
        history_settings):
    settings = history_settings
    at = [BASE + timedelta(seconds=2 * i) for i in range(40)]
    records: list[tuple[dict | bytes, datetime]] = []
    # Six quiet windows, each written twice (a running and a final version) as it happens.
    for i in range(6):
        records += [(window_update("main", at[i], **{"🔥": 5}), at[i] + timedelta(seconds=1)),
                    (window_update("main", at[i], **{"🔥": 10, "😂": i % 2}),
                     at[i] + timedelta(seconds=3))]
    records += [
        (window_update("main", at[6], **{"🔥": 100, "😂": 5}), at[6] + timedelta(seconds=1)),
        (window_update("final-2026", at[6], **{"🏏": 999}), at[6] + timedelta(seconds=1)),
        (b"not json", at[6] + timedelta(seconds=1)),
        (window_update("main", at[7], **{"🔥": 12}), at[7] + timedelta(seconds=1)),
        # A late event: window 3 again, 35 s after it ended (within HISTORY_LATE_S).
        (window_update("main", at[3], **{"🔥": 10, "😂": 1, "🎯": 1}),
         at[4] + timedelta(seconds=35)),
        # A window far later, and one written long after (beyond HISTORY_LATE_S): not read.
        (window_update("main", at[30], **{"🔥": 1}), at[30] + timedelta(seconds=1)),
        (window_update("main", at[1], **{"🔥": 77}), at[1] + timedelta(seconds=400)),
    ]
    write(settings, records)
    reader = HistoryReader(settings)
    try:
        windows = reader.windows("main", at[0].timestamp(), at[8].timestamp())
        assert [w.update for w in windows] == [
            window_update("main", at[0], **{"🔥": 10, "😂": 0}),
            window_update("main", at[1], **{"🔥": 10, "😂": 1}),
            window_update("main", at[2], **{"🔥": 10, "😂": 0}),
            window_update("main", at[3], **{"🔥": 10, "😂": 1, "🎯": 1}),
            window_update("main", at[4], **{"🔥": 10, "😂": 0}),
            window_update("main", at[5], **{"🔥": 10, "😂": 1}),
            window_update("main", at[6], **{"🔥": 100, "😂": 5}),
            window_update("main", at[7], **{"🔥": 12})]
        assert [w.total for w in windows] == [10, 11, 10, 12, 10, 11, 105, 12]
        assert [w.moment for w in windows] == [False] * 6 + [True, False]
        assert [w.previous_median for w in windows] == [None] * 5 + [10.0, 10.5, 11.0]
        # A range from the middle: the windows before it count for the median all the same.
        assert [(w.total, w.moment) for w in reader.windows(
            "main", at[6].timestamp(), at[7].timestamp())] == [(105, True)]
        assert [w.update for w in reader.windows(
            "final-2026", at[0].timestamp(), at[40 - 1].timestamp())] == [
            window_update("final-2026", at[6], **{"🏏": 999})]
        assert reader.windows("main", at[8].timestamp(), at[29].timestamp()) == []
    finally:
        reader.close()


@pytest.mark.kafka
def test_the_routes_answer_the_windows_and_the_moments(history_settings):
    settings = history_settings
    at = [BASE + timedelta(hours=1, seconds=2 * i) for i in range(8)]
    write(settings, [(window_update("main", at[i], **{"🔥": 10}), at[i] + timedelta(seconds=1))
                     for i in range(6)]
          + [(window_update("main", at[6], **{"🔥": 50}), at[6] + timedelta(seconds=1)),
             (window_update("main", at[7], **{"👏": 9}), at[7] + timedelta(seconds=1))])
    app = create_app(settings, poll=False, streams=StreamCatalog(settings), probe=FakeHealth())
    client = app.test_client()
    first, end = format_timestamp(at[0]), format_timestamp(at[7] + timedelta(seconds=2))
    answer = client.get(f"/streams/main/windows?from={first}&to={end}&limit=7")
    assert answer.status_code == 200
    assert answer.get_json() == {
        "stream_id": "main", "from": first, "to": end, "order": "oldest first",
        "windows": [window_update("main", at[i], **{"🔥": 10}) for i in range(6)]
        + [dict(window_update("main", at[6], **{"🔥": 50}), moment=True)],
        "next_from": format_timestamp(at[7])}
    answer = client.get(f"/streams/main/moments?from={first}&to={end}")
    assert answer.get_json() == {
        "stream_id": "main", "from": first, "to": end, "order": "oldest first",
        "moments": [dict(window_update("main", at[6], **{"🔥": 50}), moment=True, total=50,
                         previous_median=10.0)],
        "next_from": None}


@pytest.mark.kafka
def test_create_topics_makes_the_aggregates_topic_compacted_with_its_retention(kafka, test_env):
    name = f"retained-{uuid.uuid4().hex[:8]}"
    admin = kafka_clients.admin_client(kafka)
    try:  # an older installation's topic, without the configs: they are set on it
        admin.create_topics([NewTopic(name, 1, 1)])
        env = dict(test_env, AGGREGATED_TOPIC=name, AGGREGATED_RETENTION_S="259200",
                   AGGREGATED_RETENTION_BYTES="5000000", AGGREGATED_SEGMENT_S="600")
        created = run_script("create_topics.sh", env=env)
        assert (f"{name}: cleanup.policy set to compact,delete, retention.ms set to 259200000, "
                "retention.bytes set to 5000000, segment.ms set to 600000") in created.stderr, \
            created.stderr[-3000:]
        keys = ["cleanup.policy", "retention.ms", "retention.bytes", "segment.ms",
                "min.insync.replicas"]
        configs = admin.describe_configs([ConfigResource("TOPIC", name, keys)],
                                         config_filter="all")["topic"][name]
        assert {k: configs[k]["value"] for k in keys} == {
            "cleanup.policy": "compact,delete", "retention.ms": "259200000",
            "retention.bytes": "5000000", "segment.ms": "600000", "min.insync.replicas": "1"}
        again = run_script("create_topics.sh", env=env)
        assert " set to " not in again.stderr
    finally:
        admin.delete_topics([name])
        admin.close()
