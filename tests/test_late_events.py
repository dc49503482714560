"""The real aggregator (spark_aggregator.py, local Spark, the test run's Kafka) and late events:
an event delivered within the ingest API's delivery bound still counts; one later than the
watermark allows is dropped, and the drop is counted (emojistream_aggregator_rows_dropped_by_
watermark_total) and logged, never silent (docs/operations.md#event-time-and-delivery)."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from emojistream import config, topology
from emojistream.common import kafka_clients
from emojistream.common.events import format_timestamp, window_bounds
from tests.services import run_script, running
from tests.test_metrics import value

pytestmark = [pytest.mark.spark, pytest.mark.kafka]

# A watermark of 30 s fits MAX_EVENT_AGE_S (3) + MAX_EVENT_FUTURE_S (5) + 2 x EVENT_TIME_MARGIN_S
# (1) + INGEST_DELIVERY_TIMEOUT_S (20).
WATERMARK_DELAY_S = 30
DELIVERY_S = 20


def events(user: str, emoji: str, moment: datetime, count: int) -> bytes:
    stamp = format_timestamp(moment)
    return json.dumps([{"user_id": f"{user}-{i}", "emoji_type": emoji, "timestamp": stamp}
                       for i in range(count)]).encode()


def metric(env: dict, name: str) -> float:
    port = topology.aggregator_metrics_port(config.load(env))
    with urllib.request.urlopen(f"http://localhost:{port}/metrics", timeout=5) as answer:
        return value(answer.read().decode(), name)


def test_late_events_within_the_bound_count_and_later_ones_are_counted_as_dropped(
        kafka, test_env, tmp_path):
    env = dict(test_env, EMOJI_EVENTS_TOPIC="late-events", AGGREGATED_TOPIC="late-aggregated",
               EMOJI_EVENTS_PARTITIONS="1", CLUSTER_COUNT="1",
               CLUSTER_TOPIC_TEMPLATE="late-cluster{n}",
               SUBSCRIBERS_TOPIC_TEMPLATE="late-cluster{n}-subs", EMOJIS="🔥,😂,🎉",
               WATERMARK_DELAY_S=str(WATERMARK_DELAY_S), INGEST_DELIVERY_TIMEOUT_S=str(DELIVERY_S),
               SPARK_TRIGGER_SECONDS="0.5")
    settings = config.load(env)
    run_script("create_topics.sh", env=env)
    producer = kafka_clients.producer(settings, acks="all")
    consumer = kafka_clients.consumer(settings, settings.aggregated_topic,
                                      auto_offset_reset="earliest", consumer_timeout_ms=500)
    latest: dict[str, dict] = {}

    def send(value: bytes, record_time: datetime) -> None:
        producer.send(settings.emoji_events_topic, value=value,
                      timestamp_ms=int(record_time.timestamp() * 1000)).get(timeout=10)

    def counts(key: str) -> dict:
        return {a["emoji_type"]: a["count"] for a in latest.get(key, {}).get("aggregates", [])}

    def wait_for(condition, aggregator, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert aggregator.running(), aggregator.log()
            assert time.monotonic() < deadline, f"{what}: windows {latest}\n{aggregator.log()}"
            for record in consumer:
                latest[record.key.decode()] = json.loads(record.value)

    def key(moment: datetime) -> str:
        return f"main/{format_timestamp(window_bounds(moment, settings.window_seconds)[0])}"

    with running(tmp_path, "spark_aggregator", "spark_aggregator.py", "--checkpoint",
                 str(tmp_path / "checkpoint"), env=env) as aggregator:
        aggregator.wait_for_log("ready:", timeout_s=240)
        # 1. Events of now, the latest allowed ahead (MAX_EVENT_FUTURE_S): the watermark moves
        # to now + 5 - 30 s.
        now = datetime.now(UTC)
        send(events("now", "🔥", now + timedelta(seconds=5), 3), now)
        wait_for(lambda: counts(key(now + timedelta(seconds=5))) == {"🔥": 3}, aggregator, 240,
                 "the current window")
        # 2. Events received DELIVERY_S ago, stamped the oldest the API keeps (MAX_EVENT_AGE_S
        # before their receipt), delivered only now, as after a broker failover: they count.
        received = now - timedelta(seconds=DELIVERY_S)
        oldest = received - timedelta(seconds=settings.max_event_age_s)
        send(events("delayed", "😂", oldest, 4), received)
        wait_for(lambda: counts(key(oldest)) == {"😂": 4}, aggregator, 60,
                 "the events delivered within the bound")
        # 3. Records of three windows a minute older than the watermark, 5, 6 and 7 events each:
        # dropped, one row per window (Spark drops the partial aggregates of a stream and window
        # of a Kafka partition, not each event).
        late = [(now - timedelta(seconds=70 + 2 * settings.window_seconds * k), 5 + k)
                for k in range(3)]
        for moment, count in late:
            producer.send(settings.emoji_events_topic, value=events(f"late{count}", "🎉", moment,
                                                                   count),
                          timestamp_ms=int(moment.timestamp() * 1000))
        producer.flush()
        wait_for(lambda: f"; {len(late)} dropped in all)" in aggregator.log(), aggregator, 60,
                 "the log of the dropped rows")
        time.sleep(2)  # a batch more: nothing else is dropped
        dropped = metric(env, "emojistream_aggregator_rows_dropped_by_watermark_total")
        log = aggregator.log()
        assert aggregator.stop(timeout_s=60) == 0
    producer.close()
    consumer.close()
    print(log[-3000:])
    assert dropped == len(late)
    assert "row(s) of events later than the watermark" in log
    for moment, _ in late:
        assert key(moment) not in latest
    assert counts(key(oldest)) == {"😂": 4}
