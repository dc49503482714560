"""Ingest: events per second that emoji_api.py accepts AND that land in Kafka.

Landed events are counted in the topic, inside its records (a record carries one event or a JSON
array of them), not taken from the replies. The same app is served by each HTTP server of
--servers, side by side in one run: granian (what emoji_api.py ships), and gunicorn and uWSGI from
their own command lines. Also in the run: the one-record-per-event path
(PRODUCER_EVENTS_PER_RECORD=1, what the API did before it coalesced events), kafka-python
producing directly with one event and with 500 events a record, and the broker ceiling (Kafka's
own ProducerPerformance). HTTP load comes from wrk (Debian's package; installed by this script
when missing) with keep-alive connections; its answers are counted by status.

    .venv/bin/python bench/ingest.py [--seconds 15] [--connections 64]
                                     [--servers granian,gunicorn,uwsgi] [--no-report]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from kafka import TopicPartition

from bench import broker_ceiling
from bench.harness import isolated_kafka, report
from emojistream import kafka_clients
from emojistream.events import encode, format_timestamp
from emojistream.ingest import KafkaEventSink
from testkit.processes import Service, stop_all, wait_for_health
from testkit.sandbox import free_port
from testkit.topics import events_of

# wrk's Lua: POST the body file, count the answers by status, print them as one line at the end.
WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("BODY"):read("*a")
counts = {}
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do total[status] = (total[status] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(total) do table.insert(parts, status .. "=" .. n) end
  table.sort(parts)
  io.write("ANSWERS " .. table.concat(parts, ",") .. "\\n")
end
"""

PATHS = [("single POST /emoji", "/emoji", 1), ("POST /emojis, 100 per request", "/emojis", 100),
         ("POST /emojis, 1,000 per request", "/emojis", 1000)]


def ensure_wrk() -> str:
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
                       stdout=subprocess.DEVNULL)
    return shutil.which("wrk")


def events(count: int) -> list[dict]:
    now = format_timestamp(datetime.now(UTC))
    return [{"user_id": f"viewer_{i}", "emoji_type": "🔥", "timestamp": now} for i in range(count)]


class EventCounter:
    """Counts the events written to the events topic since it was created."""

    def __init__(self, settings):
        self.topic = settings.emoji_events_topic
        self.consumer = kafka_clients.consumer(settings, enable_auto_commit=False)
        self.partitions = [TopicPartition(self.topic, p)
                           for p in self.consumer.partitions_for_topic(self.topic)]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_end(*self.partitions)
        self.end = {tp: self.consumer.position(tp) for tp in self.partitions}

    def new_events(self) -> int:
        """Events in the records written since the last call."""
        end = self.consumer.end_offsets(self.partitions)
        count = 0
        while any(self.consumer.position(tp) < end[tp] for tp in self.partitions):
            for batch in self.consumer.poll(timeout_ms=1000, max_records=5000).values():
                count += sum(len(events_of(record.value)) for record in batch)
        return count

    def landed(self, timeout_s: float = 60) -> tuple[int, float]:
        """(the new events, the monotonic time the last of them landed), once the topic has
        not grown for 2 s."""
        total, last_growth = 0, time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and time.monotonic() - last_growth < 2:
            new = self.new_events()
            if new:
                total, last_growth = total + new, time.monotonic()
            time.sleep(0.2)
        return total, last_growth

    def close(self):
        self.consumer.close()


def start_server(server: str, env: dict, port: int, log_dir: Path) -> Service:
    """emoji_api.py (granian), or the same app under gunicorn or uWSGI with the same workers
    and threads."""
    workers, threads = env.get("API_WORKERS", "2"), env.get("API_THREADS", "4")
    if server == "granian":
        return Service(log_dir, server, "emoji_api.py", env=env)
    if server == "gunicorn":
        return Service(log_dir, server, ".venv/bin/gunicorn", "--workers", workers, "--threads",
                       threads, "--worker-class", "gthread", "--bind", f"127.0.0.1:{port}",
                       "--log-level", "warning", "emoji_api:worker_app()", env=env)
    if server == "uwsgi":
        return Service(log_dir, server, ".venv/bin/uwsgi", "--http-socket", f"127.0.0.1:{port}",
                       "--module", "emoji_api:worker_app()", "--processes", workers,
                       "--threads", threads, "--master", "--lazy-apps", "--disable-logging",
                       "--die-on-term", env=env)
    raise ValueError(f"unknown server {server!r}")


def http_run(url: str, batch: int, seconds: int, connections: int, tmp: Path,
             counter: EventCounter) -> tuple[float, float, str, float]:
    """(events landed/s, requests/s, answers by status, load generator CPU in cores)."""
    body = tmp / f"body-{batch}.json"
    body.write_bytes(encode(events(batch)[0] if batch == 1 else events(batch)))
    script = tmp / f"post-{batch}.lua"
    script.write_text(WRK_SCRIPT.replace("BODY", str(body)))
    counter.new_events()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run([ensure_wrk(), "-t2", f"-c{connections}", f"-d{seconds}s", "-s",
                          str(script), url], capture_output=True, text=True, check=True).stdout
    elapsed = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    landed, landed_at = counter.landed()
    requests_per_s = float(out.split("Requests/sec:")[1].split()[0])
    answers = out.split("ANSWERS ")[1].split()[0] if "ANSWERS " in out else "?"
    load_cpu = (cpu_after.ru_utime + cpu_after.ru_stime
                - cpu_before.ru_utime - cpu_before.ru_stime) / elapsed
    # Until the last event landed: what the API had buffered counts only once it is in Kafka.
    return landed / max(elapsed, landed_at - started), requests_per_s, answers, load_cpu


def server_rows(server: str, env: dict, args, tmp: Path, counter: EventCounter,
                label_suffix: str = "", paths=PATHS) -> list[list]:
    port = free_port()
    env = dict(env, API_PORT=str(port), LOG_LEVEL="WARNING")
    service = start_server(server, env, port, tmp)
    rows = []
    try:
        wait_for_health(f"http://127.0.0.1:{port}/health", service, timeout_s=60)
        for label, path, batch in paths:
            landed, rps, answers, cpu = http_run(f"http://127.0.0.1:{port}{path}", batch,
                                                 args.seconds, args.connections, tmp, counter)
            rows.append([f"{server}: {label}{label_suffix}", f"{landed:,.0f}", f"{rps:,.0f}",
                         answers, f"{cpu:.2f}"])
    finally:
        stop_all([service])
    return rows


def direct_run(settings, count: int, per_record: int, counter: EventCounter) -> float:
    """kafka-python producing directly, with the API's producer options."""
    options = {**KafkaEventSink(settings).producer_options(), "max_block_ms": 60_000}
    producer = kafka_clients.producer(settings, **options)
    record = encode(events(per_record)[0] if per_record == 1 else events(per_record))
    counter.new_events()
    started = time.monotonic()
    for _ in range(count // per_record):
        producer.send(settings.emoji_events_topic, record)
    producer.flush()
    producer.close()
    landed, landed_at = counter.landed()
    return landed / (landed_at - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--servers", default="granian,gunicorn,uwsgi",
                        help="HTTP servers to measure, side by side (default: %(default)s)")
    parser.add_argument("--direct-events", type=int, default=500_000)
    parser.add_argument("--ceiling-records", type=int, default=1_000_000)
    parser.add_argument("--no-report", action="store_true",
                        help="print the table without appending it to docs/benchmarks.md")
    args = parser.parse_args()
    ceiling = broker_ceiling.ceiling(args.ceiling_records)
    rows = []
    with isolated_kafka() as (env, settings), tempfile.TemporaryDirectory() as tmp:
        counter = EventCounter(settings)
        try:
            for server in args.servers.split(","):
                rows += server_rows(server, env, args, Path(tmp), counter)
            rows += server_rows("granian", dict(env, PRODUCER_EVENTS_PER_RECORD="1"), args,
                                Path(tmp), counter, " (one record per event)",
                                paths=[PATHS[0], PATHS[2]])
            for per_record in (1, 500):
                direct = direct_run(settings, args.direct_events, per_record, counter)
                rows.append([f"kafka-python directly (no HTTP), {per_record} event(s) a record",
                             f"{direct:,.0f}", "", "", ""])
        finally:
            counter.close()
    for row in rows:
        landed = float(row[1].replace(",", ""))
        row.insert(2, f"{landed / ceiling:.2f}")
    report("Ingest", ["load", "events/s landed", "ratio to ceiling", "requests/s",
                      "answers by status", "load generator CPU (cores)"], rows,
           notes=f"Broker ceiling (acks=all, one event a record, Kafka's ProducerPerformance) "
                 f"measured in the same run: {ceiling:,.0f} records/s. Each server runs the "
                 f"same app, 2 workers x 4 threads; wrk: 2 threads, {args.connections} "
                 f"keep-alive connections, {args.seconds} s per row.",
           write=not args.no_report)


if __name__ == "__main__":
    main()
