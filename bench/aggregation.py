"""Aggregation: whether spark_aggregator.py keeps up at a given event rate, and its processing
time per micro-batch.

A backlog of records as the ingest API writes them (--events-per-record events each, a JSON
array; their times spread over the last two windows and within a second of their record's
timestamp, as a batch of live traffic has them; 100,000 users; all allowed emojis) is written to
emoji-events. Then, for each rate R, the aggregator's own query (spark_aggregator.start_query)
runs from the start of the topic with maxOffsetsPerTrigger set so that every micro-batch holds
what R events/s bring in one trigger; it keeps up at R when the batches finish within the
trigger interval. Output goes to a scratch topic.

    .venv/bin/python -m bench.aggregation [--rates 10000,50000,100000] [--batches 20]
                                          [--trigger SECONDS] [--events-per-record 500]
                                          [--variants 'NAME:SETTING=VALUE,...;...']
                                          [--plot docs/aggregation.png]
                                          [--results-dir bench/results]

Each variant (settings such as SPARK_STATE_STORE=rocksdb or UNIQUE_USERS_LG_K=12 over the
defaults) runs every rate in a Spark session of its own, side by side in one run. Besides the
batch time, each phase of Spark's own progress report (durationMs: latestOffset, getBatch,
queryPlanning, addBatch, walCommit, commitOffsets) is kept as its median, to show where a
batch's time goes.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import harness, plots
from bench.harness import isolated_kafka
from emojistream import config
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
    phases = {phase: statistics.median(p["durationMs"].get(phase, 0) for p in progress)
              for phase in PHASES}
    rows = sum(p["numInputRows"] for p in progress) * per_record
    skipped = sum(p["observedMetrics"]["input"]["malformed"]
                  + p["observedMetrics"]["input"]["untimely"] for p in progress)
    return {"rows_per_batch": per_trigger, "median_ms": statistics.median(durations),
            "skipped": skipped, "phases_median_ms": phases,
            "p95_ms": durations[int(0.95 * (len(durations) - 1))],
            "processed_per_s": rows / (sum(durations) / 1000)}


# The phases of a micro-batch in Spark's StreamingQueryProgress.durationMs.
PHASES = ["latestOffset", "getBatch", "queryPlanning", "addBatch", "walCommit", "commitOffsets"]
HEADERS = ["variant", "events/s", "events per batch", "median batch ms", "p95 batch ms",
           "events/s processed while busy", "keeps up", "events skipped",
           *(f"{phase} ms" for phase in PHASES)]


def rows(rates: list[dict]) -> list[list]:
    return [[r.get("variant", "defaults"), f"{r['rate_per_s']:,}", f"{r['events_per_batch']:,}",
             f"{r['median_batch_ms']:,.0f}", f"{r['p95_batch_ms']:,.0f}",
             f"{r['processed_per_s']:,.0f}", "yes" if r["keeps_up"] else "no",
             r["events_skipped"],
             *(f"{r['phases_median_ms'][phase]:,.0f}" if "phases_median_ms" in r else ""
               for phase in PHASES)] for r in rates]


def measure_variant(env: dict, name: str, overrides: dict, args, rates: list[int],
                    tmp: str) -> list[dict]:
    """Every rate under one variant's settings, in a Spark session of its own."""
    settings = config.load({**env, **overrides})
    settings = dataclasses.replace(
        settings, aggregated_topic=settings.cluster_topic(1),
        spark_trigger_seconds=args.trigger or settings.spark_trigger_seconds)
    measured = []
    spark = spark_session(settings, "aggregation-benchmark")
    try:
        for rate in rates:
            r = run_at_rate(spark, settings, rate, args.batches,
                            str(Path(tmp) / f"cp-{name}-{rate}"), args.events_per_record)
            measured.append({
                "variant": name, "settings": overrides,
                "rate_per_s": rate, "events_per_batch": r["rows_per_batch"],
                "median_batch_ms": r["median_ms"], "p95_batch_ms": r["p95_ms"],
                "phases_median_ms": r["phases_median_ms"],
                "processed_per_s": r["processed_per_s"],
                "keeps_up": r["p95_ms"] <= settings.spark_trigger_seconds * 1000,
                "events_skipped": r["skipped"]})
    finally:
        spark.stop()
    return measured


def main(argv=None) -> None:
    parser = harness.parser("aggregation", __doc__)
    parser.add_argument("--rates", default="10000,50000,100000")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--trigger", type=float,
                        help="trigger interval in seconds (default: SPARK_TRIGGER_SECONDS); a "
                             "longer one spreads each batch's fixed cost over more events")
    parser.add_argument("--events-per-record", type=int, default=500,
                        help="events a record carries (the API's PRODUCER_EVENTS_PER_RECORD; "
                             "1: one record per event)")
    parser.add_argument("--variants", default="defaults:",
                        help="'NAME:SETTING=VALUE,...;NAME:...': each runs every rate with "
                             "those settings over the defaults")
    parser.add_argument("--plot", default=None,
                        help="write a PNG of the events/s processed while busy against the "
                             "offered rate here (e.g. docs/aggregation.png)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: "
                                                   "%(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    run = harness.Run("aggregation", args)
    rates = [int(r) for r in args.rates.split(",")]
    variants = harness.variants(args.variants)
    measured = []
    with isolated_kafka() as (env, settings), \
            tempfile.TemporaryDirectory() as tmp:
        trigger_s = args.trigger or settings.spark_trigger_seconds
        backlog = int(max(rates) * trigger_s * (args.batches + 4))
        write_backlog(settings, backlog, args.events_per_record)
        for name, overrides in variants:
            measured += measure_variant(env, name, overrides, args, rates, tmp)
    title = "Aggregation"
    harness.print_table(title, HEADERS, rows(measured))
    notes = (f"Trigger interval {trigger_s} s, SPARK_MASTER "
             f"{settings.spark_master}, {settings.spark_shuffle_partitions} shuffle partitions, a "
             f"backlog of {backlog:,} events in records of {args.events_per_record}. Keeps up: "
             f"the p95 batch time is within the trigger interval.")
    print(notes)
    run.save(title, {"rates": measured, "variants": dict(variants), "trigger_s": trigger_s,
                     "spark_master": settings.spark_master,
                     "shuffle_partitions": settings.spark_shuffle_partitions,
                     "backlog_events": backlog, "events_per_record": args.events_per_record},
             notes)
    if args.plot:
        plots.curves(args.plot, {"events/s processed while busy":
                                 [(r["rate_per_s"], r["processed_per_s"]) for r in measured
                                  if r["variant"] == variants[-1][0]]},
                     f"Aggregation: capacity against the offered rate (trigger "
                     f"{trigger_s} s); above y = x it keeps up",
                     xlabel="offered events/s", ylabel="events/s", diagonal=True)


if __name__ == "__main__":
    main()
