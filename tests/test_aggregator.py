"""The aggregator's transformations on a static DataFrame: windows, counts, normalization, the
skipping of invalid records, and the JSON it writes (Spark in local mode, no Kafka)."""

from __future__ import annotations

import json

import pytest

import spark_aggregator
from emojistream import config
from emojistream.spark import spark_session

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def spark(test_env):
    session = spark_session(config.load(test_env), "aggregator-unit-test",
                            {"spark.master": "local[2]", "spark.sql.shuffle.partitions": "2"})
    yield session
    session.stop()


def raw_records(spark, values: list):
    """A DataFrame shaped like the Kafka source: binary ``value`` column."""
    rows = [(v if isinstance(v, bytes) else json.dumps(v).encode(),) for v in values]
    return spark.createDataFrame(rows, "value binary")


def updates(spark, settings, values: list) -> dict:
    events = spark_aggregator.parse_events(raw_records(spark, values), settings)
    windows = spark_aggregator.aggregate_windows(events.where("valid"), settings)
    rows = spark_aggregator.to_window_updates(windows, settings).collect()
    return {row.key: json.loads(row.value) for row in rows}


def event(user, emoji, timestamp):
    return {"user_id": user, "emoji_type": emoji, "timestamp": timestamp}


def test_counts_normalization_and_epoch_aligned_windows(spark):
    settings = config.load({})
    values = ([event(f"u{i % 30}", "🔥", "2026-11-27T07:15:56.000Z") for i in range(120)]
              + [event(f"u{i}", "😂", "2026-11-27T07:15:57.999Z") for i in range(20)]
              + [event("solo", "👏", "2026-11-27T07:15:57.500Z") for _ in range(19)]
              + [event("next", "🔥", "2026-11-27T07:15:58.000Z")])
    result = updates(spark, settings, values)
    assert result == {
        "2026-11-27T07:15:56.000Z": {
            "window_start": "2026-11-27T07:15:56.000Z",
            "window_end": "2026-11-27T07:15:58.000Z",
            "aggregates": [
                {"emoji_type": "👏", "count": 19, "normalized_count": 0, "unique_users": 1},
                {"emoji_type": "🔥", "count": 120, "normalized_count": 2, "unique_users": 30},
                {"emoji_type": "😂", "count": 20, "normalized_count": 1, "unique_users": 20}]},
        "2026-11-27T07:15:58.000Z": {
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
        "2026-11-27T07:15:55.000Z": {
            "window_start": "2026-11-27T07:15:55.000Z",
            "window_end": "2026-11-27T07:16:00.000Z",
            "aggregates": [
                {"emoji_type": "🔥", "count": 5, "normalized_count": 3, "unique_users": 1},
                {"emoji_type": "🎯", "count": 2, "normalized_count": 0, "unique_users": 1}]}}


def test_invalid_records_are_flagged_and_not_counted(spark):
    settings = config.load({})
    good = event("u1", "🔥", "2026-11-27T07:15:56.000Z")
    bad = [b"\xff\xfe", b"[1, 2]", b"{}", b'{"user_id": 5}',
           event("u1", "🍕", "2026-11-27T07:15:56.000Z"),
           event("", "🔥", "2026-11-27T07:15:56.000Z"),
           event("u" * 65, "🔥", "2026-11-27T07:15:56.000Z"),
           event("u1", "🔥", "yesterday"),
           event("u1", None, "2026-11-27T07:15:56.000Z")]
    events = spark_aggregator.parse_events(raw_records(spark, [good] + bad), settings)
    assert [row.valid for row in events.collect()] == [True] + [False] * len(bad)
    assert updates(spark, settings, [good] + bad)["2026-11-27T07:15:56.000Z"]["aggregates"] == [
        {"emoji_type": "🔥", "count": 1, "normalized_count": 0, "unique_users": 1}]
