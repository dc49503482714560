"""Aggregation: whether spark_aggregator.py keeps up at a given event rate, and its processing
time per micro-batch.

A backlog of event-shaped JSON records (timestamps spread over the last two windows, as a batch
of live traffic has them; 100,000 users; all allowed emojis) is written to emoji-events with
Kafka's ProducerPerformance. Then, for each
rate R, the aggregator's own query (spark_aggregator.start_query) runs from the start of the
topic with maxOffsetsPerTrigger = R x trigger interval, so every micro-batch holds what R
events/s bring in one trigger; it keeps up at R when the batches finish within the trigger
interval. Output goes to a scratch topic.

    .venv/bin/python bench/aggregation.py [--rates 10000,50000,100000] [--batches 20]
                                          [--trigger SECONDS]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import spark_aggregator
from bench.harness import REPO_ROOT, isolated_kafka, report
from emojistream.events import encode, format_timestamp
from emojistream.spark import spark_session


def write_payloads(path: Path, settings, count: int = 50_000) -> None:
    now = datetime.now(UTC)
    span_s = 2 * settings.window_seconds
    lines = [encode({"user_id": f"viewer_{random.randrange(100_000)}",
                     "emoji_type": random.choice(settings.allowed_emojis),
                     "timestamp": format_timestamp(now - timedelta(seconds=span_s * i / count))
                     }).decode() for i in range(count)]
    path.write_text("\n".join(reversed(lines)) + "\n")


def write_backlog(settings, records: int, payloads: Path) -> None:
    subprocess.run([str(REPO_ROOT / "scripts" / "kafka-producer-perf-test.sh"),
                    "--topic", settings.emoji_events_topic, "--num-records", str(records),
                    "--payload-file", str(payloads), "--throughput", "-1", "--producer-props",
                    f"bootstrap.servers={settings.kafka_bootstrap_servers}",
                    "linger.ms=20", "batch.size=262144", "compression.type=lz4"],
                   check=True, capture_output=True)


def run_at_rate(spark, settings, rate: int, batches: int, checkpoint: str) -> dict:
    per_trigger = int(rate * settings.spark_trigger_seconds)
    tuned = dataclasses.replace(settings, spark_max_offsets_per_trigger=per_trigger)
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
    rows = sum(p["numInputRows"] for p in progress)
    return {"rows_per_batch": per_trigger, "median_ms": statistics.median(durations),
            "p95_ms": durations[int(0.95 * (len(durations) - 1))],
            "processed_per_s": rows / (sum(durations) / 1000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10000,50000,100000")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--trigger", type=float,
                        help="trigger interval in seconds (default: SPARK_TRIGGER_SECONDS); a "
                             "longer one spreads each batch's fixed cost over more events")
    parser.add_argument("--no-report", action="store_true",
                        help="print the table without appending it to docs/benchmarks.md")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    rows = []
    with isolated_kafka() as (env, settings), \
            tempfile.TemporaryDirectory() as tmp:
        settings = dataclasses.replace(
            settings, aggregated_topic=settings.cluster_topic(1),
            spark_trigger_seconds=args.trigger or settings.spark_trigger_seconds)
        payloads = Path(tmp) / "events.jsonl"
        write_payloads(payloads, settings)
        backlog = max(r * settings.spark_trigger_seconds for r in rates) * (args.batches + 4)
        write_backlog(settings, int(backlog), payloads)
        spark = spark_session(settings, "aggregation-benchmark")
        try:
            for rate in rates:
                r = run_at_rate(spark, settings, rate, args.batches, str(Path(tmp) / f"cp-{rate}"))
                keeps_up = r["p95_ms"] <= settings.spark_trigger_seconds * 1000
                rows.append([f"{rate:,}", f"{r['rows_per_batch']:,}", f"{r['median_ms']:,.0f}",
                             f"{r['p95_ms']:,.0f}", f"{r['processed_per_s']:,.0f}",
                             "yes" if keeps_up else "no"])
        finally:
            spark.stop()
    report("Aggregation", ["events/s", "events per batch", "median batch ms", "p95 batch ms",
                           "events/s processed while busy", "keeps up"], rows,
           notes=f"Trigger interval {settings.spark_trigger_seconds} s, SPARK_MASTER "
                 f"{settings.spark_master}, {settings.spark_shuffle_partitions} shuffle "
                 f"partitions, {backlog:,.0f} backlog records.",
           write=not args.no_report)


if __name__ == "__main__":
    main()
