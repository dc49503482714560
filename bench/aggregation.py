"""Aggregation: whether spark_aggregator.py keeps up at a given event rate, and its processing
time per micro-batch.

A backlog of records as the ingest API writes them (--events-per-record events each, a JSON
array; their times spread over the last two windows and within a second of their record's
timestamp, as a batch of live traffic has them; 100,000 users; all allowed emojis) is written to
emoji-events. Then, for each rate R, the aggregator's own query (spark_aggregator.start_query)
runs from the start of the topic with maxOffsetsPerTrigger set so that every micro-batch holds
what R events/s bring in one trigger; it keeps up at R when the batches finish within the
trigger interval. Output goes to a scratch topic.

    .venv/bin/python bench/aggregation.py [--rates 10000,50000,100000] [--batches 20]
                                          [--trigger SECONDS] [--events-per-record 500]
                                          [--plot docs/aggregation.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import plots
from bench.harness import isolated_kafka, report
from emojistream.aggregator import job as spark_aggregator
from emojistream.aggregator.spark import spark_session
from emojistream.common import kafka_clients
from emojistream.common.events import encode, format_timestamp


def write_backlog(settings, events: int, per_record: int) -> None:
    """``events`` events in records of ``per_record``, written with kafka-python, each record
    stamped with the time of its newest event (as the API stamps its records)."""
    producer = kafka_clients.producer(settings, acks=1, linger_ms=20, batch_size=900_000,
                                      compression_type="lz4")
    now = datetime.now(UTC)
    span_s = 2 * settings.window_seconds
    records = events // per_record
    for r in range(records):
        newest = now - timedelta(seconds=span_s * (records - r) / records)
        batch = [{"user_id": f"viewer_{random.randrange(100_000)}",
                  "emoji_type": random.choice(settings.allowed_emojis),
                  "timestamp": format_timestamp(newest - timedelta(seconds=random.random()))}
                 for _ in range(per_record)]
        producer.send(settings.emoji_events_topic, encode(batch if per_record > 1 else batch[0]),
                      timestamp_ms=int(newest.timestamp() * 1000))
    producer.flush()
    producer.close()


def run_at_rate(spark, settings, rate: int, batches: int, checkpoint: str,
                per_record: int) -> dict:
    per_trigger = int(rate * settings.spark_trigger_seconds)
    tuned = dataclasses.replace(settings,
                                spark_max_offsets_per_trigger=max(1, per_trigger // per_record))
    query = spark_aggregator.start_query(spark, tuned, checkpoint)
    try:
        while len([p for p in query.recentProgress if p["numInputRows"]]) < batches + 2:
            if query.exception():
                raise RuntimeError(query.exception())
            time.sleep(1)
        # The first two batches include start-up and code generation.
        progress = [p for p in query.recentProgress if p["numInputRows"]][2:batches + 2]
    finally:
        query.stop()
    durations = sorted(p["durationMs"]["triggerExecution"] for p in progress)
    rows = sum(p["numInputRows"] for p in progress) * per_record
    skipped = sum(p["observedMetrics"]["input"]["malformed"]
                  + p["observedMetrics"]["input"]["untimely"] for p in progress)
    return {"rows_per_batch": per_trigger, "median_ms": statistics.median(durations),
            "skipped": skipped,
            "p95_ms": durations[int(0.95 * (len(durations) - 1))],
            "processed_per_s": rows / (sum(durations) / 1000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10000,50000,100000")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--trigger", type=float,
                        help="trigger interval in seconds (default: SPARK_TRIGGER_SECONDS); a "
                             "longer one spreads each batch's fixed cost over more events")
    parser.add_argument("--events-per-record", type=int, default=500,
                        help="events a record carries (the API's PRODUCER_EVENTS_PER_RECORD; "
                             "1: one record per event)")
    parser.add_argument("--plot", default=None,
                        help="write a PNG of the events/s processed while busy against the "
                             "offered rate here (e.g. docs/aggregation.png)")
    parser.add_argument("--no-report", action="store_true",
                        help="print the table without appending it to docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: "
                                                   "%(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    rates = [int(r) for r in args.rates.split(",")]
    rows, points = [], []
    with isolated_kafka() as (env, settings), \
            tempfile.TemporaryDirectory() as tmp:
        settings = dataclasses.replace(
            settings, aggregated_topic=settings.cluster_topic(1),
            spark_trigger_seconds=args.trigger or settings.spark_trigger_seconds)
        backlog = int(max(rates) * settings.spark_trigger_seconds * (args.batches + 4))
        write_backlog(settings, backlog, args.events_per_record)
        spark = spark_session(settings, "aggregation-benchmark")
        try:
            for rate in rates:
                r = run_at_rate(spark, settings, rate, args.batches, str(Path(tmp) / f"cp-{rate}"),
                                args.events_per_record)
                keeps_up = r["p95_ms"] <= settings.spark_trigger_seconds * 1000
                points.append((rate, r["processed_per_s"]))
                rows.append([f"{rate:,}", f"{r['rows_per_batch']:,}", f"{r['median_ms']:,.0f}",
                             f"{r['p95_ms']:,.0f}", f"{r['processed_per_s']:,.0f}",
                             "yes" if keeps_up else "no", r["skipped"]])
        finally:
            spark.stop()
    report("Aggregation", ["events/s", "events per batch", "median batch ms", "p95 batch ms",
                           "events/s processed while busy", "keeps up", "events skipped"], rows,
           notes=f"Trigger interval {settings.spark_trigger_seconds} s, SPARK_MASTER "
                 f"{settings.spark_master}, {settings.spark_shuffle_partitions} shuffle "
                 f"partitions, a backlog of {backlog:,} events in records of "
                 f"{args.events_per_record}.",
           write=not args.no_report)
    if args.plot:
        plots.curves(args.plot, {"events/s processed while busy": points},
                     f"Aggregation: capacity against the offered rate (trigger "
                     f"{settings.spark_trigger_seconds} s); above y = x it keeps up",
                     xlabel="offered events/s", ylabel="events/s", diagonal=True)


if __name__ == "__main__":
    main()
