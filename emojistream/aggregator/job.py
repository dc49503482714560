"""The aggregator's Spark Structured Streaming query: read, parse, window, write.

Reads the emoji-events topic, counts each emoji of each live stream in event-time tumbling
windows aligned to the epoch, and writes one record per (stream, window) to
aggregated-emoji-topic every time it changes (output mode "update"), keyed "STREAM/START".

A record of the events topic holds one event (a JSON object) or many (a JSON array); an event
without a stream_id belongs to "main". The ingest API lets in only the known streams; this job
checks that a stream id is well-formed, not that it is known. Each (stream, window) is one row
with a count and an HLL sketch of the user ids per allowed emoji, so every record is the window's
complete picture. Events that are not valid, or whose time is too far from their record's
(docs/operations.md#settings), are skipped and counted.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StringType, StructField, StructType

from emojistream.aggregator import checkpoints
from emojistream.aggregator.spark import kafka_options
from emojistream.common.events import DEFAULT_STREAM, MAX_USER_ID_LENGTH
from emojistream.common.settings import STREAM_ID

EVENT_SCHEMA = StructType([StructField("user_id", StringType()),
                           StructField("emoji_type", StringType()),
                           StructField("timestamp", StringType()),
                           StructField("stream_id", StringType())])
# Spark reads a record holding one JSON object as an array of one.
RECORD_SCHEMA = ArrayType(EVENT_SCHEMA)
ISO_UTC = "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'"


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
