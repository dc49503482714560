#!/usr/bin/env python3
"""Spark Structured Streaming job: emoji events in, one aggregate per stream and window out.

Reads the emoji-events topic, counts each emoji of each live stream in event-time tumbling
windows aligned to the epoch, and writes one record per (stream, window) to aggregated-emoji-topic
every time it changes (output mode "update"): the latest record of a window replaces the earlier
ones, and the last one counts every event of the window. The record's key is "STREAM/START".

    {"stream_id": "main", "window_start": "...Z", "window_end": "...Z",
     "aggregates": [{"emoji_type": "🔥", "count": 1234, "normalized_count": 13,
                     "unique_users": 57}, ...]}

A record of the events topic holds one event (a JSON object) or many (a JSON array of them); an
event without a stream_id belongs to "main". The ingest API lets in only the known streams; this
job checks that a stream id is well-formed, not that it is known.

Each (stream, window) is one row, with a count and an HLL sketch of the user ids (Apache
DataSketches, hll_sketch_agg, 2^UNIQUE_USERS_LG_K buckets: 0.8% relative standard error by
default, exact for small counts) per allowed emoji, so every record is the window's complete
picture. Events that are not valid, or whose time is too far from their record's
(emojistream/config.py), are skipped and counted.

Metrics (batch duration, rows/s, skipped events, watermark delay, state rows) are served at
http://METRICS_HOST:METRICS_FIRST_PORT/metrics; Spark's own UI at SPARK_UI_PORT (logged).
"""

from __future__ import annotations

import argparse
import sys
import time

from py4j.protocol import Py4JError
from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQueryListener
from pyspark.sql.types import ArrayType, StringType, StructField, StructType

from emojistream.aggregator import checkpoints
from emojistream.aggregator.spark import ConnectorMissing, kafka_options, spark_session
from emojistream.common import kafka_clients, metrics
from emojistream.common.events import DEFAULT_STREAM, MAX_USER_ID_LENGTH, format_timestamp
from emojistream.common.lifecycle import load_settings, stop_on_signals
from emojistream.common.logs import setup_logging
from emojistream.config import STREAM_ID

EVENT_SCHEMA = StructType([StructField("user_id", StringType()),
                           StructField("emoji_type", StringType()),
                           StructField("timestamp", StringType()),
                           StructField("stream_id", StringType())])
# Spark reads a record holding one JSON object as an array of one.
RECORD_SCHEMA = ArrayType(EVENT_SCHEMA)
ISO_UTC = "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'"
# In Spark's error for a checkpoint whose state has other columns than the query's
# (STATE_STORE_KEY_SCHEMA_NOT_COMPATIBLE, STATE_STORE_VALUE_SCHEMA_NOT_COMPATIBLE).
STATE_SCHEMA_CHANGED = "SCHEMA_NOT_COMPATIBLE"


def read_events(spark, settings, replay: checkpoints.Replay | None = None) -> DataFrame:
    """The raw records of the events topic: from the start, or from a replay's time."""
    source = (spark.readStream.format("kafka")
              .options(**kafka_options(settings))
              .option("subscribe", settings.emoji_events_topic)
              .option("startingOffsets", "earliest")
              .option("failOnDataLoss", "false")
              .option("maxOffsetsPerTrigger", settings.spark_max_offsets_per_trigger))
    if replay is not None:
        source = (source.option("startingTimestamp", str(replay.replay_from_ms))
                  .option("startingOffsetsByTimestampStrategy", "latest"))
    return source.load()


def parse_events(raw: DataFrame, settings) -> DataFrame:
    """One row per event of the records' JSON values, with flags: ``valid`` (counted), and why
    not: ``malformed`` (not an event of the allowed kind), ``untimely`` (a well-formed event
    whose time is too far from its record's, or whose record's time is ahead of this clock)."""
    events = raw.select(F.explode_outer(F.from_json(F.col("value").cast("string"),
                                                    RECORD_SCHEMA)).alias("event"),
                        F.col("timestamp").alias("record_time"))
    parsed = events.select(
        F.coalesce(F.col("event.stream_id"), F.lit(DEFAULT_STREAM)).alias("stream_id"),
        F.col("event.user_id").alias("user_id"),
        F.col("event.emoji_type").alias("emoji_type"),
        F.try_to_timestamp(F.col("event.timestamp")).alias("event_time"),
        "record_time")
    well_formed = F.coalesce(F.col("event_time").isNotNull()
                             & F.col("emoji_type").isin(*settings.allowed_emojis)
                             & F.length("user_id").between(1, MAX_USER_ID_LENGTH)
                             & F.col("stream_id").rlike(f"^{STREAM_ID.pattern}$"), F.lit(False))
    return (parsed.withColumn("malformed", ~well_formed)
            .withColumn("untimely", well_formed & ~_in_time(settings))
            .withColumn("valid", ~F.col("malformed") & ~F.col("untimely")))


def _in_time(settings):
    """The event's time within the API's limits (plus a margin) of its record's timestamp, and
    that timestamp not ahead of the batch's clock by more than the margin: no record can move
    the watermark ahead of real time (see emojistream/config.py)."""
    margin = settings.event_time_margin_s
    earliest = _seconds_before("record_time", settings.max_event_age_s + margin)
    latest = _seconds_before("record_time", -(settings.max_event_future_s + margin))
    return (F.col("event_time").between(earliest, latest)
            & (F.col("record_time") <= _seconds_before(F.current_timestamp(), -margin)))


def _seconds_before(moment, seconds: float):
    return F.timestamp_micros(F.unix_micros(F.col(moment) if isinstance(moment, str) else moment)
                              - int(seconds * 1_000_000))


def count_skipped(events: DataFrame) -> DataFrame:
    """Events per micro-batch and how many of them were skipped, and why, in the query's
    progress."""
    return events.observe("input",
                          F.count(F.lit(1)).alias("events"),
                          F.count(F.when(F.col("malformed"), 1)).alias("malformed"),
                          F.count(F.when(F.col("untimely"), 1)).alias("untimely"))


def aggregate_windows(events: DataFrame, settings) -> DataFrame:
    """One row per stream and window: count and distinct users of each allowed emoji."""
    columns = []
    for i, emoji in enumerate(settings.allowed_emojis):
        is_emoji = F.col("emoji_type") == emoji
        columns += [F.count(F.when(is_emoji, 1)).alias(f"count_{i}"),
                    F.hll_sketch_estimate(F.hll_sketch_agg(
                        F.when(is_emoji, F.col("user_id")), settings.unique_users_lg_k)
                    ).alias(f"users_{i}")]
    return (events
            .withWatermark("event_time", f"{settings.watermark_delay_s} seconds")
            .groupBy("stream_id", F.window("event_time", f"{settings.window_seconds} seconds"))
            .agg(*columns))


def to_window_updates(windows: DataFrame, settings) -> DataFrame:
    """Kafka records (key: "STREAM/WINDOW_START", value: the window update JSON)."""
    def normalized(count):
        return (F.when(count >= settings.normalize_threshold,
                       F.ceil(count / settings.normalize_divisor)).otherwise(F.lit(0)))

    entries = F.array(*[
        F.struct(F.lit(emoji).alias("emoji_type"),
                 F.col(f"count_{i}").alias("count"),
                 normalized(F.col(f"count_{i}")).cast("long").alias("normalized_count"),
                 F.col(f"users_{i}").alias("unique_users"))
        for i, emoji in enumerate(settings.allowed_emojis)])
    window_start = F.date_format("window.start", ISO_UTC)
    update = F.struct(F.col("stream_id"),
                      window_start.alias("window_start"),
                      F.date_format("window.end", ISO_UTC).alias("window_end"),
                      F.filter(entries, lambda entry: entry["count"] > 0).alias("aggregates"))
    key = F.concat_ws("/", "stream_id", window_start)
    return windows.select(key.alias("key"), F.to_json(update).alias("value"))


def start_query(spark, settings, checkpoint: str):
    checkpoints.write_local_checkpoints_plainly(spark, checkpoint)
    replay = checkpoints.load_replay(checkpoint)
    events = count_skipped(parse_events(read_events(spark, settings, replay), settings))
    windows = aggregate_windows(events.where("valid"), settings)
    if replay is not None:  # windows before it would be counted in part
        windows = windows.where(F.col("window.start") >= F.lit(replay.first_window))
    return (to_window_updates(windows, settings).writeStream
            .format("kafka")
            .options(**kafka_options(settings))
            .option("topic", settings.aggregated_topic)
            .option("checkpointLocation", checkpoint)
            .outputMode("update")
            .trigger(processingTime=f"{settings.spark_trigger_seconds} seconds")
            .queryName("emoji-window-aggregates")
            .start())


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Aggregate emoji events into windows with Spark Structured Streaming. "
                    "Settings come from the environment (see emojistream/config.py): "
                    "KAFKA_BOOTSTRAP_SERVERS, SPARK_MASTER, WINDOW_SECONDS, WATERMARK_DELAY_S, "
                    "NORMALIZE_THRESHOLD, NORMALIZE_DIVISOR, EMOJIS, ...")
    parser.add_argument("--checkpoint",
                        help="checkpoint folder or URL, e.g. hdfs://... on a cluster "
                             "(default: $VAR_DIR/spark/checkpoints/aggregator)")
    parser.add_argument("--progress-interval", type=float, default=10.0,
                        help="seconds between progress lines in the log (default: 10)")
    parser.add_argument("--reset-checkpoint", action="store_true",
                        help="move the checkpoint aside, leave a replay in its place and exit "
                             "(see docs/operations.md; scripts/reset_aggregator.sh does it "
                             "around a running system)")
    parser.add_argument("--replay-from", metavar="TIME",
                        help="with --reset-checkpoint: replay the events written since TIME "
                             "(ISO-8601, or how long ago: 10m, 2h); default: from before the "
                             "batch that moved the watermark ahead of its clock")
    args = parser.parse_args(argv)
    if args.replay_from and not args.reset_checkpoint:
        parser.error("--replay-from goes with --reset-checkpoint")
    if args.replay_from:
        try:
            args.replay_from = checkpoints.parse_replay_from(args.replay_from)
        except ValueError as err:
            parser.error(str(err))
    return args


class ProgressLog(StreamingQueryListener):
    """Counts events and skipped events over every micro-batch and logs them."""

    def __init__(self, log, interval_s: float):
        self.log, self.interval_s = log, interval_s
        self.records = self.skipped = 0
        self.last_logged = time.monotonic()

    def onQueryStarted(self, event):
        self.log.info("query %s started", event.id)

    def onQueryProgress(self, event):
        progress = event.progress
        observed = progress.observedMetrics.get("input")
        malformed, untimely = ((observed["malformed"], observed["untimely"])
                               if observed is not None else (0, 0))
        self.records += progress.numInputRows
        self.skipped += malformed + untimely
        if malformed or untimely:
            self.log.warning("batch %d: skipped %d event(s): %d not valid events, %d too far "
                             "from their record's time (%d skipped in all)", progress.batchId,
                             malformed + untimely, malformed, untimely, self.skipped)
        if time.monotonic() - self.last_logged >= self.interval_s:
            self.last_logged = time.monotonic()
            self.log.info("batch %d: %d records in all, %d events skipped; last batch %d "
                          "records in %s ms", progress.batchId, self.records, self.skipped,
                          progress.numInputRows, progress.durationMs.get("triggerExecution"))

    def onQueryIdle(self, event):
        pass

    def onQueryTerminated(self, event):
        pass  # main() reports why the query stopped


def failure_message(error: str, checkpoint: str) -> str:
    """One line for the operator on a query that stopped with ``error`` (Spark's message)."""
    first_line = next((line for line in error.splitlines() if line.strip()), "no reason given")
    if STATE_SCHEMA_CHANGED in error:
        return (f"the checkpoint {checkpoint} holds windows of another shape than this aggregator "
                "counts (written by an earlier version, before windows were counted per "
                "stream, or with other settings): scripts/reset_aggregator.sh starts a new "
                f"checkpoint and counts again from a time you choose ({first_line.strip()})")
    return f"the query stopped: {first_line.strip()}"


class ProgressMetrics(StreamingQueryListener):
    """Each micro-batch's progress into the aggregator's metrics."""

    def __init__(self, aggregator_metrics: metrics.AggregatorMetrics):
        self.metrics = aggregator_metrics

    def onQueryStarted(self, event):
        pass

    def onQueryProgress(self, event):
        self.metrics.record(event.progress)

    def onQueryIdle(self, event):
        pass

    def onQueryTerminated(self, event):
        pass


def reset_checkpoint(checkpoint: str, settings, replay_from, log) -> int:
    try:
        replay, kept = checkpoints.reset(checkpoint, settings, replay_from)
    except (checkpoints.CheckpointError, OSError) as err:
        log.error("cannot reset the checkpoint: %s", err)
        return 1
    log.info("checkpoint reset: the old one is in %s; the aggregator will replay the events "
             "written since %s and write the windows from %s on", kept,
             format_timestamp(replay.replay_from), format_timestamp(replay.first_window))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    log = setup_logging("spark_aggregator")
    settings = load_settings(log)
    checkpoint = args.checkpoint or checkpoints.default_location(settings)
    if args.reset_checkpoint:
        return reset_checkpoint(checkpoint, settings, args.replay_from, log)
    try:
        kafka_clients.wait_for_kafka(settings)
        spark = spark_session(settings, "emoji-aggregator")
    except (kafka_clients.KafkaUnavailable, ConnectorMissing) as err:
        log.error("%s", err)
        return 1
    stopping = stop_on_signals()
    try:
        spark.streams.addListener(ProgressLog(log, args.progress_interval))
        serve_metrics(spark, settings, log)
        query = start_query(spark, settings, checkpoint)
        log.info("ready: aggregating %s into %s: %s-second windows, watermark %s s, master %s",
                 settings.emoji_events_topic, settings.aggregated_topic,
                 settings.window_seconds, settings.watermark_delay_s, settings.spark_master)
        # Wait in short steps: a signal handler only runs between Python calls.
        while not stopping.is_set():
            if query.awaitTermination(1):
                return 1
        return 0
    except StreamingQueryException as err:
        log.error("%s", failure_message(str(err), checkpoint))
        return 1
    except Py4JError:
        if stopping.is_set():
            return 0
        log.exception("lost Spark's JVM")
        return 1
    finally:
        stop_spark(spark, log)


def serve_metrics(spark, settings, log) -> None:
    """The metrics on their port, from every batch's progress; where Spark's UI is."""
    aggregator_metrics = metrics.AggregatorMetrics()
    spark.streams.addListener(ProgressMetrics(aggregator_metrics))
    metrics.serve(aggregator_metrics.registry, settings.metrics_host,
                  settings.aggregator_metrics_port(), "spark_aggregator")
    ui = spark.sparkContext.uiWebUrl
    log.info("Spark's UI: %s", ui or "off (SPARK_UI_ENABLED=false)")


def stop_spark(spark, log) -> None:
    log.info("stopping")
    try:
        for query in spark.streams.active:
            query.stop()
        spark.stop()
    except Py4JError:
        log.info("Spark's JVM has already stopped")


if __name__ == "__main__":
    sys.exit(main())
