"""Ingest: events per second that emoji_api.py accepts AND that land in Kafka, before and after
issue 11, side by side in one run.

Landed events are counted in the topic, inside its records (a record carries one event or a JSON
array of them), not taken from the replies. Every configuration below serves at the same time
(each idle while another is measured), and the trials alternate between them: trial 1 measures
them in order, trial 2 in reverse, and so on, so that a machine whose speed changes by the hour
slows every configuration alike. Each row gives the median of --trials trials and their range.

- before: the API of commit dd833b1 (the last before issue 11), checked out into a temporary
  folder: gunicorn 2 workers x 8 threads, the standard library's json, one Kafka record per
  event, its validator;
- today's emoji_api.py served by each HTTP server of --servers: granian (what it ships), and
  gunicorn and uWSGI from their own command lines (2 workers x 4 threads each): orjson, events
  coalesced into records of up to PRODUCER_EVENTS_PER_RECORD (500);
- granian with PRODUCER_EVENTS_PER_RECORD=1: today's code with one record per event;
- with --flask-floor, the floor of single POSTs (issue 22): granian with the same workers and
  threads serving bench/flask_floor.py, a Flask route that reads the body and answers the same
  JSON (it sends nothing to Kafka: compare its requests/s).

--before REF serves another commit's emoji_api.py as "before" (e.g. main, to measure a branch
against it); --batches 1 measures single POSTs only.

Also in the run, once: kafka-python producing directly with one event and with 500 events a
record, and the broker ceiling (Kafka's own ProducerPerformance). HTTP load comes from wrk
(Debian's package; installed by this script when missing) with keep-alive connections; its
answers are counted by status.

    .venv/bin/python -m bench.ingest [--seconds 10] [--trials 3] [--connections 64]
                                     [--servers granian,gunicorn,uwsgi] [--no-before]
                                     [--before REF] [--flask-floor] [--batches 1,100,1000]
                                     [--plot docs/ingest.png] [--results-dir bench/results]
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kafka import TopicPartition

from bench import broker_ceiling, harness, plots
from bench.harness import REPO_ROOT, isolated_kafka
from emojistream.common import kafka_clients
from emojistream.common.events import encode, format_timestamp
from emojistream.ingest.sink import KafkaEventSink
from testkit.processes import Service, stop_all, wait_for_health
from testkit.sandbox import free_port
from testkit.topics import events_of

log = logging.getLogger("ingest")

BEFORE_COMMIT = "dd833b1"  # the last commit before issue 11's changes to the ingest path

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

FLASK_FLOOR = "granian: a bare Flask route"  # --flask-floor
PATHS = [("single POST /emoji", "/emoji", 1), ("POST /emojis, 100 per request", "/emojis", 100),
         ("POST /emojis, 1,000 per request", "/emojis", 1000)]


def batch_sizes(text: str) -> list[int]:
    """--batches: sizes of PATHS only."""
    sizes = [int(b) for b in text.split(",")]
    known = [batch for _, _, batch in PATHS]
    if not set(sizes) <= set(known):
        raise argparse.ArgumentTypeError(f"sizes among {known}, got {text!r}")
    return sizes


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


@dataclass
class Config:
    """One way of serving the ingest API, running while the benchmark lasts."""

    label: str
    service: Service
    port: int
    paths: list = field(default_factory=lambda: PATHS)


def server_command(server: str, env: dict, port: int) -> tuple[str, ...]:
    """Today's emoji_api.py (granian), or the same app under gunicorn or uWSGI with the same
    workers and threads."""
    workers, threads = env.get("API_WORKERS", "2"), env.get("API_THREADS", "4")
    if server == "granian":
        return ("emoji_api.py",)
    if server == "gunicorn":
        return (".venv/bin/gunicorn", "--workers", workers, "--threads", threads,
                "--worker-class", "gthread", "--bind", f"127.0.0.1:{port}", "--log-level",
                "warning", "emojistream.ingest.server:worker_app()")
    if server == "uwsgi":
        return (".venv/bin/uwsgi", "--http-socket", f"127.0.0.1:{port}", "--module",
                "emojistream.ingest.server:worker_app()", "--processes", workers,
                "--threads", threads,
                "--master", "--lazy-apps", "--disable-logging", "--die-on-term")
    raise ValueError(f"unknown server {server!r}")


def before_tree(tmp: Path, commit: str) -> Path:
    """The repository as of ``commit``, in a folder of ``tmp``."""
    tree = tmp / f"before-{commit}"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=REPO_ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def start(label: str, env: dict, tmp: Path, command, paths=PATHS) -> Config:
    """``command(port)`` -> (script, args...) run on a free port; waits for /health."""
    port = free_port()
    # wrk cannot bind its connections to several source addresses: the per-address event
    # bucket is off here, this benchmark measures the HTTP and Kafka path (docs/benchmarks.md).
    env = dict(env, API_PORT=str(port), LOG_LEVEL="WARNING", API_EVENTS_PER_S_PER_ADDRESS="0")
    name = "".join(c if c.isalnum() else "_" for c in label)[:48]
    service = Service(tmp, name, *command(env, port), env=env)
    wait_for_health(f"http://127.0.0.1:{port}/health", service, timeout_s=90)
    log.info("%s listening on %d", label, port)
    return Config(label, service, port, paths)


def start_configs(env: dict, args, tmp: Path) -> list[Config]:
    paths = [p for p in PATHS if p[2] in args.batches]
    configs = []
    if args.before:
        commit = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=True).stdout.strip()
        tree = before_tree(tmp, commit)
        what = ("gunicorn 2x8, stdlib json, one record per event"
                if args.before == BEFORE_COMMIT else "its emoji_api.py")
        configs.append(start(f"before ({commit}): {what}", dict(env, PYTHONPATH=str(tree)), tmp,
                             lambda _env, _port: (str(tree / "emoji_api.py"),), paths))
    for server in args.servers.split(","):
        configs.append(start(f"{server}: today's app", env, tmp,
                             lambda e, p, s=server: server_command(s, e, p), paths))
    configs.append(start("granian, one record per event: today's app",
                         dict(env, PRODUCER_EVENTS_PER_RECORD="1"), tmp,
                         lambda e, p: server_command("granian", e, p), paths))
    if args.flask_floor:
        configs.append(start(FLASK_FLOOR, dict(env, PYTHONPATH=str(REPO_ROOT)), tmp,
                             lambda _env, _port: ("bench/flask_floor.py",), PATHS[:1]))
    return configs


def http_run(url: str, batch: int, seconds: int, connections: int, tmp: Path,
             counter: EventCounter) -> dict:
    """Events landed/s, requests/s, answers by status and load generator CPU (cores)."""
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
    answers = out.split("ANSWERS ")[1].split()[0] if "ANSWERS " in out else ""
    # Until the last event landed: what the API had buffered counts only once it is in Kafka.
    return {"landed": landed / max(elapsed, landed_at - started),
            "rps": float(out.split("Requests/sec:")[1].split()[0]),
            "non_2xx": non_2xx(answers),
            "cpu": (cpu_after.ru_utime + cpu_after.ru_stime
                    - cpu_before.ru_utime - cpu_before.ru_stime) / elapsed}


def non_2xx(answers: str) -> int:
    """Answers other than 2xx in wrk's line "200=n,503=m"."""
    counts = [part.split("=") for part in answers.split(",") if "=" in part]
    return sum(int(n) for status, n in counts if not status.startswith("2"))


def trials(configs: list[Config], args, tmp: Path, counter: EventCounter) -> dict:
    """(config label, path label, events per request) -> the figures of each trial; the order
    of the configurations alternates from one trial to the next."""
    results: dict[tuple[str, str, int], list[dict]] = {}
    for trial in range(args.trials):
        order = configs if trial % 2 == 0 else configs[::-1]
        for config in order:
            for label, path, batch in config.paths:
                figures = http_run(f"http://127.0.0.1:{config.port}{path}", batch,
                                   args.seconds, args.connections, tmp, counter)
                log.info("trial %d, %s, %s: %s events/s landed", trial + 1, config.label,
                         label, f"{figures['landed']:,.0f}")
                results.setdefault((config.label, label, batch), []).append(figures)
    return results


def http_results(results: dict, ceiling: float) -> list[dict]:
    """One dict per configuration and path: medians, ranges and every trial."""
    out = []
    for (config, path, batch), runs in results.items():
        landed, rps = [r["landed"] for r in runs], [r["rps"] for r in runs]
        out.append({"config": config, "path": path, "events_per_request": batch,
                    "landed_per_s": statistics.median(landed), "landed_per_s_min": min(landed),
                    "landed_per_s_max": max(landed),
                    "ratio_to_ceiling": statistics.median(landed) / ceiling,
                    "requests_per_s": statistics.median(rps), "requests_per_s_min": min(rps),
                    "requests_per_s_max": max(rps),
                    "non_2xx": sum(r["non_2xx"] for r in runs),
                    "load_generator_cores": statistics.median(r["cpu"] for r in runs),
                    "trials": [{"landed_per_s": r["landed"], "requests_per_s": r["rps"],
                                "non_2xx": r["non_2xx"], "load_generator_cores": r["cpu"]}
                               for r in runs]})
    return out


def spread(median: float, low: float, high: float) -> str:
    return f"{median:,.0f} ({low:,.0f}-{high:,.0f})"


HEADERS = ["load", "events/s landed: median (range)", "ratio to ceiling",
           "requests/s: median (range)", "non-2xx answers", "load generator CPU (cores)"]


def rows(results: dict) -> list[list]:
    """The printed table."""
    out = [[f"{r['config']}: {r['path']}",
            spread(r["landed_per_s"], r["landed_per_s_min"], r["landed_per_s_max"]),
            f"{r['ratio_to_ceiling']:.3f}",
            spread(r["requests_per_s"], r["requests_per_s_min"], r["requests_per_s_max"]),
            r["non_2xx"], f"{r['load_generator_cores']:.2f}"] for r in results["http"]]
    out += [[f"kafka-python directly (no HTTP), {r['events_per_record']} event(s) a record",
             f"{r['landed_per_s']:,.0f}", f"{r['ratio_to_ceiling']:.3f}", "", "", ""]
            for r in results["direct"]]
    return out


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


def measure(args, ceiling: float) -> dict:
    """The HTTP rows, and kafka-python producing directly."""
    with isolated_kafka() as (env, settings), tempfile.TemporaryDirectory() as tmp:
        counter, configs = EventCounter(settings), []
        try:
            configs = start_configs(env, args, Path(tmp))
            http = http_results(trials(configs, args, Path(tmp), counter), ceiling)
            direct = []
            for per_record in (1, 500):
                landed = direct_run(settings, args.direct_events, per_record, counter)
                direct.append({"events_per_record": per_record, "landed_per_s": landed,
                               "ratio_to_ceiling": landed / ceiling})
        finally:
            stop_all([c.service for c in configs])
            counter.close()
    return {"ceiling_records_per_s": ceiling, "http": http, "direct": direct}


def plot(path: str, http: list[dict]) -> None:
    bars = {f"{r['config'].split(':')[0]}: {r['path']}":
            [t["landed_per_s"] for t in r["trials"]] for r in http}
    plots.bars(path, bars, "Ingest: events/s landed in Kafka (median, range of the trials)",
               "events/s landed (log scale)", log_scale=True)


def parse_args(argv=None):
    parser = harness.parser("ingest", __doc__)
    parser.add_argument("--seconds", type=int, default=10, help="wrk's run per row and trial")
    parser.add_argument("--trials", type=int, default=3,
                        help="trials of every row, alternating the order (default 3)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--servers", default="granian,gunicorn,uwsgi",
                        help="HTTP servers to serve today's app (default: %(default)s)")
    parser.add_argument("--before", default=BEFORE_COMMIT, metavar="REF",
                        help="the commit whose emoji_api.py serves as before (default: "
                             "%(default)s, the last before issue 11)")
    parser.add_argument("--no-before", dest="before", action="store_const", const=None,
                        help="leave out the before configuration")
    parser.add_argument("--flask-floor", action="store_true",
                        help="also serve bench/flask_floor.py (a bare Flask route) the same way")
    parser.add_argument("--batches", type=batch_sizes, default=[batch for _, _, batch in PATHS],
                        help="events per request to measure, among 1, 100 and 1000 (default: "
                             "all three)")
    parser.add_argument("--direct-events", type=int, default=500_000)
    parser.add_argument("--ceiling-records", type=int, default=1_000_000)
    parser.add_argument("--plot", default=None,
                        help="write a PNG of events/s landed here (e.g. docs/ingest.png)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: "
                                                   "%(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    run = harness.Run("ingest", args)
    ceiling = broker_ceiling.ceiling(args.ceiling_records)
    results = measure(args, ceiling)
    title = "Ingest, before and after issue 11"
    harness.print_table(title, HEADERS, rows(results))
    notes = (f"Broker ceiling (acks=all, one event a record, Kafka's ProducerPerformance) "
             f"measured in the same run: {ceiling:,.0f} records/s. {args.trials} trials per row, "
             f"the configurations alternating (all of them serving throughout, idle while "
             f"another is measured); wrk: 2 threads, {args.connections} keep-alive connections, "
             f"{args.seconds} s per row and trial. Events/s landed: until the last event of the "
             f"trial was in Kafka.")
    print(notes)
    run.save(title, results, notes)
    if args.plot:
        plot(args.plot, results["http"])


if __name__ == "__main__":
    main()
