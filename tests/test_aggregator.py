"""The aggregator's transformations on a static DataFrame: windows, counts, normalization, both
record shapes (one event, or an array of them), the skipping of invalid and untimely events, and
the JSON it writes (Spark in local mode, no Kafka)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from emojistream import config
from emojistream.aggregator import job as spark_aggregator
from emojistream.aggregator.spark import spark_session
from emojistream.common.events import format_timestamp
from tests.services import REPO_ROOT

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def spark(test_env):
    session = spark_session(config.load(test_env), "aggregator-unit-test",
                            {"spark.master": "local[2]", "spark.sql.shuffle.partitions": "2"})
    yield session
    session.stop()


def test_the_driver_loads_the_projects_log4j_and_its_configuration(spark):
    """Not pyspark's bundled Log4j: lib/log4j's, the brokers' version (jvm/log4j/pom.xml)."""
    jvm = spark.sparkContext._jvm
    for name in ("org.apache.logging.log4j.core.LoggerContext", "org.apache.logging.log4j.Logger",
                 "org.apache.logging.slf4j.Log4jLoggerFactory"):
        jar = (jvm.java.lang.Class.forName(name).getProtectionDomain().getCodeSource()
               .getLocation().getPath())
        assert jar.startswith(str(REPO_ROOT / "lib" / "log4j") + "/"), (name, jar)
        assert jar.endswith(f"-{LOG4J_VERSION}.jar"), jar
    assert jvm.java.lang.System.getProperty("log4j2.configurationFile") == str(
        REPO_ROOT / "config" / "spark-log4j2.properties")
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.executor.extraClassPath") == str(REPO_ROOT / "lib" / "log4j" / "*")


LOG4J_VERSION = re.search(r"<log4j.version>(.+)</log4j.version>",
                          (REPO_ROOT / "jvm" / "log4j" / "pom.xml").read_text()).group(1)


# The Kafka record timestamp the static records get, unless given: within a second of the events
# the tests use, as the API's records are. (An hour before now: not ahead of Spark's clock.)
RECORD_TIME = datetime(2026, 11, 27, 7, 15, 57, tzinfo=UTC)


def raw_records(spark, values: list, record_time: datetime = RECORD_TIME):
    """A DataFrame shaped like the Kafka source: binary ``value``, ``timestamp`` columns.
    A value is bytes, or what json.dumps makes a record of; ``(value, time)`` gives the record
    its own timestamp."""
    rows = []
    for value in values:
        value, moment = value if isinstance(value, tuple) else (value, record_time)
        rows.append((value if isinstance(value, bytes) else json.dumps(value).encode(), moment))
    return spark.createDataFrame(rows, "value binary, timestamp timestamp")


def updates(spark, settings, values: list) -> dict:
    events = spark_aggregator.parse_events(raw_records(spark, values), settings)
    windows = spark_aggregator.aggregate_windows(events.where("valid"), settings)
    rows = spark_aggregator.to_window_updates(windows, settings).collect()
    return {row.key: json.loads(row.value) for row in rows}


def event(user, emoji, timestamp, **more):
    return {"user_id": user, "emoji_type": emoji, "timestamp": timestamp, **more}


def test_counts_normalization_and_epoch_aligned_windows(spark):
    settings = config.load({})
    values = ([event(f"u{i % 30}", "🔥", "2026-11-27T07:15:56.000Z") for i in range(120)]
              + [event(f"u{i}", "😂", "2026-11-27T07:15:57.999Z") for i in range(20)]
              + [event("solo", "👏", "2026-11-27T07:15:57.500Z") for _ in range(19)]
              + [event("next", "🔥", "2026-11-27T07:15:58.000Z")])
    result = updates(spark, settings, values)
    assert result == {
        "main/2026-11-27T07:15:56.000Z": {
            "stream_id": "main",
            "window_start": "2026-11-27T07:15:56.000Z",
            "window_end": "2026-11-27T07:15:58.000Z",
            "aggregates": [
                {"emoji_type": "👏", "count": 19, "normalized_count": 0, "unique_users": 1},
                {"emoji_type": "🔥", "count": 120, "normalized_count": 2, "unique_users": 30},
                {"emoji_type": "😂", "count": 20, "normalized_count": 1, "unique_users": 20}]},
        "main/2026-11-27T07:15:58.000Z": {
            "stream_id": "main",
            "window_start": "2026-11-27T07:15:58.000Z",
            "window_end": "2026-11-27T07:16:00.000Z",
            "aggregates": [
                {"emoji_type": "🔥", "count": 1, "normalized_count": 0, "unique_users": 1}]},
    }


def test_configured_window_threshold_and_divisor(spark):
    settings = config.load({"WINDOW_SECONDS": "5", "NORMALIZE_THRESHOLD": "3",
                            "NORMALIZE_DIVISOR": "2", "EMOJIS": "🔥,🎯"})
    values = [event("a", "🔥", "2026-11-27T07:15:55.100Z") for _ in range(5)] + [
        event("b", "🎯", "2026-11-27T07:15:59.900Z") for _ in range(2)]
    assert updates(spark, settings, values) == {
        "main/2026-11-27T07:15:55.000Z": {
            "stream_id": "main",
            "window_start": "2026-11-27T07:15:55.000Z",
            "window_end": "2026-11-27T07:16:00.000Z",
            "aggregates": [
                {"emoji_type": "🔥", "count": 5, "normalized_count": 3, "unique_users": 1},
                {"emoji_type": "🎯", "count": 2, "normalized_count": 0, "unique_users": 1}]}}


def test_each_stream_has_its_own_windows_and_a_malformed_stream_id_is_skipped(spark):
    settings = config.load({})
    at_56 = "2026-11-27T07:15:56.000Z"
    values = [[event("a", "🔥", at_56), event("b", "🔥", at_56, stream_id="final-2026"),
               event("c", "😂", at_56, stream_id="final-2026"),
               event("d", "🔥", at_56, stream_id="main")],
              event("e", "🔥", at_56, stream_id="bad id"), event("f", "🔥", at_56, stream_id=""),
              event("g", "🔥", at_56, stream_id="x" * 65)]
    rows = spark_aggregator.parse_events(raw_records(spark, values), settings).collect()
    assert [(row.user_id, row.stream_id, row.malformed) for row in rows] == [
        ("a", "main", False), ("b", "final-2026", False), ("c", "final-2026", False),
        ("d", "main", False), ("e", "bad id", True), ("f", "", True), ("g", "x" * 65, True)]
    window = {"window_start": at_56, "window_end": "2026-11-27T07:15:58.000Z"}
    assert updates(spark, settings, values) == {
        f"main/{at_56}": {"stream_id": "main", **window, "aggregates": [
            {"emoji_type": "🔥", "count": 2, "normalized_count": 0, "unique_users": 2}]},
        f"final-2026/{at_56}": {"stream_id": "final-2026", **window, "aggregates": [
            {"emoji_type": "🔥", "count": 1, "normalized_count": 0, "unique_users": 1},
            {"emoji_type": "😂", "count": 1, "normalized_count": 0, "unique_users": 1}]}}


def test_invalid_records_are_flagged_and_not_counted(spark):
    settings = config.load({})
    good = event("u1", "🔥", "2026-11-27T07:15:56.000Z")
    bad = [b"\xff\xfe", b"[1, 2]", b"{}", b'{"user_id": 5}',
           event("u1", "🍕", "2026-11-27T07:15:56.000Z"),
           event("", "🔥", "2026-11-27T07:15:56.000Z"),
           event("u" * 65, "🔥", "2026-11-27T07:15:56.000Z"),
           event("u1", "🔥", "yesterday"),
           event("u1", None, "2026-11-27T07:15:56.000Z")]
    events = spark_aggregator.parse_events(raw_records(spark, [good] + bad), settings).collect()
    assert [(row.valid, row.malformed) for row in events] == [(True, False)] + [
        (False, True)] * len(bad)
    result = updates(spark, settings, [good] + bad)
    assert result["main/2026-11-27T07:15:56.000Z"]["aggregates"] == [
        {"emoji_type": "🔥", "count": 1, "normalized_count": 0, "unique_users": 1}]


def test_a_record_may_hold_an_array_of_events_and_both_shapes_count_alike(spark):
    settings = config.load({})
    fire = [event(f"u{i}", "🔥", "2026-11-27T07:15:56.100Z") for i in range(500)]
    laugh = event("v", "😂", "2026-11-27T07:15:57.000Z")
    values = [fire[:250], fire[250:], laugh, [laugh, laugh],
              [event("w", "🔥", "2026-11-27T07:15:58.5Z")]]
    assert updates(spark, settings, values) == {
        "main/2026-11-27T07:15:56.000Z": {
            "stream_id": "main",
            "window_start": "2026-11-27T07:15:56.000Z",
            "window_end": "2026-11-27T07:15:58.000Z",
            "aggregates": [
                {"emoji_type": "🔥", "count": 500, "normalized_count": 5, "unique_users": 500},
                {"emoji_type": "😂", "count": 3, "normalized_count": 0, "unique_users": 1}]},
        "main/2026-11-27T07:15:58.000Z": {
            "stream_id": "main",
            "window_start": "2026-11-27T07:15:58.000Z",
            "window_end": "2026-11-27T07:16:00.000Z",
            "aggregates": [
                {"emoji_type": "🔥", "count": 1, "normalized_count": 0, "unique_users": 1}]}}


def test_in_an_array_each_invalid_event_is_skipped_and_a_malformed_array_is_one_skip(spark):
    settings = config.load({})
    good = event("u1", "🔥", "2026-11-27T07:15:56.000Z")
    values = [[good, event("u2", "🍕", "2026-11-27T07:15:56.000Z"), good, {}],
              b'[{"user_id": "u3"}, 7]', b"[]", b"[[1]]"]
    rows = spark_aggregator.parse_events(raw_records(spark, values), settings).collect()
    assert [(row.user_id, row.valid) for row in rows] == [
        ("u1", True), ("u2", False), ("u1", True), (None, False),
        (None, False), (None, False), (None, False)]
    assert updates(spark, settings, values)["main/2026-11-27T07:15:56.000Z"]["aggregates"] == [
        {"emoji_type": "🔥", "count": 2, "normalized_count": 0, "unique_users": 1}]


def at(seconds: float) -> str:
    return format_timestamp(RECORD_TIME + timedelta(seconds=seconds))


def test_events_far_from_their_records_time_are_skipped_as_untimely(spark):
    """With the defaults an event may be 3 s older and 5 s newer than its record, plus a margin
    of 1 s: one far-future event could otherwise move the watermark past every later event."""
    settings = config.load({})
    values = [event("poison", "🔥", "9999-01-01T00:00:00.000Z"),
              event("old", "🔥", at(-4.001)), event("oldest kept", "🔥", at(-4.0)),
              event("newest kept", "🔥", at(6.0)), event("new", "🔥", at(6.001)),
              event("ancient", "🔥", "2001-01-01T00:00:00.000Z")]
    rows = spark_aggregator.parse_events(raw_records(spark, values), settings).collect()
    assert [(row.user_id, row.valid, row.untimely) for row in rows] == [
        ("poison", False, True), ("old", False, True), ("oldest kept", True, False),
        ("newest kept", True, False), ("new", False, True), ("ancient", False, True)]


def test_a_record_whose_own_time_is_ahead_of_the_clock_is_skipped(spark):
    """A producer whose clock is ahead writes records and events that agree with each other: the
    record's time ahead of the aggregator's clock gives it away."""
    settings = config.load({})
    now = datetime.now(UTC)
    ahead = now + timedelta(minutes=30)
    values = [(event("ahead", "🔥", format_timestamp(ahead)), ahead),
              (event("now", "🔥", format_timestamp(now)), now)]
    rows = spark_aggregator.parse_events(raw_records(spark, values), settings).collect()
    assert [(row.user_id, row.valid, row.untimely) for row in rows] == [
        ("ahead", False, True), ("now", True, False)]
