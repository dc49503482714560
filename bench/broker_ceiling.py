"""Broker ceiling: how many event-sized records per second Kafka itself takes on this machine.

Runs Kafka's own ProducerPerformance tool (scripts/kafka-producer-perf-test.sh, from the installed
kafka-tools jars) against a broker of its own, writing records the size of our JSON events to a
topic shaped like emoji-events. Every ingest figure is also given as a ratio to this ceiling.

    .venv/bin/python bench/broker_ceiling.py [--records 2000000] [--no-report]
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import REPO_ROOT, isolated_kafka, report
from emojistream import config
from emojistream.common.events import encode, format_timestamp

SUMMARY = re.compile(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), "
                     r"([\d.]+) ms avg latency, ([\d.]+) ms max latency, (\d+) ms 50th, "
                     r"(\d+) ms 95th, (\d+) ms 99th")


def write_payloads(path: Path, count: int = 10_000) -> int:
    """Event-shaped JSON payloads, one a line, for --payload-file; returns their mean size."""
    emojis = config.load({}).allowed_emojis
    now = datetime.now(UTC)
    lines = [encode({"user_id": f"viewer_{random.randrange(1_000_000)}",
                     "emoji_type": random.choice(emojis),
                     "timestamp": format_timestamp(now)}).decode() for _ in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return round(sum(len(line.encode()) for line in lines) / count)


def producer_performance(settings, records: int, payloads: Path, acks: str) -> dict:
    props = [f"bootstrap.servers={settings.kafka_bootstrap_servers}", f"acks={acks}",
             "linger.ms=20", "batch.size=262144", "compression.type=lz4"]
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "kafka-producer-perf-test.sh"),
         "--topic", settings.emoji_events_topic, "--num-records", str(records),
         "--payload-file", str(payloads), "--throughput", "-1", "--producer-props", *props],
        capture_output=True, text=True, check=True)
    match = SUMMARY.search(result.stdout.strip().splitlines()[-1])
    if not match:
        raise RuntimeError(f"unexpected ProducerPerformance output: {result.stdout[-500:]}")
    sent, rate, mb, avg, max_, p50, p95, p99 = match.groups()
    return {"records": int(sent), "rate": float(rate), "mb": float(mb), "p50": int(p50),
            "p99": int(p99)}


def measure(records: int) -> list[list]:
    rows = []
    with isolated_kafka() as (env, settings), tempfile.TemporaryDirectory() as tmp:
        payloads = Path(tmp) / "events.jsonl"
        size = write_payloads(payloads)
        for acks in ("1", "all"):
            r = producer_performance(settings, records, payloads, acks)
            rows.append([f"ProducerPerformance acks={acks}, lz4, {size}-byte JSON events",
                         r["records"], f"{r['rate']:,.0f}", r["mb"], r["p50"], r["p99"]])
    return rows


def ceiling(records: int = 1_000_000) -> float:
    """The broker ceiling in records/s (acks=all), for other benchmarks' ratios."""
    return float(measure(records)[-1][2].replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--no-report", action="store_true",
                        help="print the table without appending it to docs/benchmarks.md")
    args = parser.parse_args()
    report("Broker ceiling", ["run", "records", "records/s", "MB/s", "p50 ms", "p99 ms"],
           measure(args.records), write=not args.no_report)


if __name__ == "__main__":
    main()
