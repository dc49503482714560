"""End to end: the delay from the ingest API accepting an emoji to a viewer receiving the last
update of that emoji's window, at given event rates and at the highest sustainable one; and the
peak resident memory of every component meanwhile.

    .venv/bin/python -m bench.end_to_end [--rates 1000,10000,max] [--seconds 60]
        [--plot docs/end_to_end_latency.png] [--plot-rates docs/end_to_end_rates.png]
        [--variants 'before:;after:SPARK_TRIGGER_SECONDS=0.1'] [--results-dir bench/results]

The whole system runs as scripts/start_all.sh starts it, on free ports with a temporary VAR_DIR
(its configured sizes: Kafka heap, Spark driver memory and shuffle partitions as by default or
as set in the environment), and is stopped by scripts/stop_all.sh (by pid) at the end. With
--variants (NAME:SETTING=VALUE,...; an empty list is the defaults), each variant in turn gets a
system of its own started with its settings, and the same runs; their rows are side by side in
the one result file, labelled with the variant's name.

Load: a process of its own sends POST /emojis at a steady rate over --connections keep-alive
connections, --requests-per-second requests of rate / requests-per-second events each (at
1,000/s: 10 events every 10 ms). Every event's timestamp is the moment its request is sent; the
moment the 200 reply arrives is its acceptance time, and the reply's "accepted" its count.
Viewers: as many as clusters, registered through POST /register (which picks their clusters) and
connected with their token, note the arrival time (time.time(), same clock) and total count of
every window update.

Per run, for each window (floor(event time / WINDOW_SECONDS)) and viewer, the last update
received is the delivery: each event's latency is that arrival minus its acceptance time (the
window length is reported beside, not subtracted), and the window counts as exact when the last
update's total equals the events accepted for it, for every viewer. Beside it, the delay a
viewer sees after the window: for each window and viewer, the last update's arrival minus the
window's end ("after the end"). Where that time goes ("hops"): per window, the last accepted
request's reply, then the time Kafka stamped on the window's last update in aggregated-emoji-
topic (the aggregator's output), in cluster1-topic (the main publisher's) and in cluster1-topic-
subscribers (the cluster publisher's), then the viewers' arrival, each after the window's end.
Each run starts at a window boundary and waits until every window is delivered exactly (or
--drain-seconds pass), then until no update came for 3 s (no backlog left). All runs share one
system, after an unmeasured warm-up (--warmup-seconds at 500/s, 60 by default: the JVM's
compiler is still at work on the aggregator's first minute of micro-batches, which then take two
to four times as long as later ones). An event the API reads more than MAX_EVENT_AGE_S after it
was sent gets the API's time instead, hence possibly another window: under overload, windows
then stop matching.

"max" probes rates from --probe-start up, times --probe-factor, in runs of --probe-seconds,
until one does not hold (or starts below the lowest given rate that did not hold), then bisects
--probe-refinements times between the highest rate that held and the lowest that did not; the
highest that held is marked "= highest sustainable". A run holds when nothing was refused, at
least 95% of the target rate was accepted, every window was delivered exactly, p99 latency is
within --max-p99-s and latency did not grow by more than --max-drift-s from the first third of
the windows to the last.

Memory: VmRSS of each component's process tree (pid files in VAR_DIR/run and Kafka's), sampled
every 0.5 s during each run: per component peak and the peak of the simultaneous sum.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import math
import multiprocessing
import os
import random
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from kafka import TopicPartition
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import connect

from bench import harness, plots
from bench.harness import WHOLE_MACHINE, RssSampler, SystemFailed, system_pids, whole_system
from emojistream import topology
from emojistream.client.viewer import RegistrationClient, RegistrationError
from emojistream.common import kafka_clients
from emojistream.common.events import DEFAULT_STREAM, parse_timestamp

log = logging.getLogger("end_to_end")

PLACEHOLDER = b"@TS@"
TEMPLATES = 32           # distinct request bodies per run (users and emojis drawn at random)
USERS = 100_000          # user ids the events are spread over
MIN_ACHIEVED = 0.95      # of the target rate, for a run to hold
WARMUP_RATE = 500
CLOSED_BY_US = "closed by the benchmark"
QUIET_S = 3              # without updates after a run, before the next one starts


# --- load: POST /emojis at a steady rate, in a process of its own ------------------------------

@dataclass(frozen=True)
class LoadPlan:
    url: str             # http://host:port/emojis
    rate: int            # events/s
    seconds: float
    start: float         # epoch seconds of the first request
    requests_per_s: int
    connections: int
    emojis: tuple[str, ...]

    @property
    def batch(self) -> int:
        return max(1, math.ceil(self.rate / self.requests_per_s))

    @property
    def requests(self) -> int:
        return max(1, round(self.rate * self.seconds / self.batch))

    @property
    def interval(self) -> float:
        return self.batch / self.rate


@dataclass
class LoadResult:
    sent: list[tuple[int, float, int]]   # (send epoch ms, acceptance epoch s, events accepted)
    refused: int = 0                     # events refused or lost with a failed request
    errors: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    elapsed_s: float = 0.0
    max_send_lag_s: float = 0.0          # how far behind its schedule a request went out


def bodies(plan: LoadPlan) -> list[bytes]:
    """Request bodies with the timestamp left as PLACEHOLDER."""
    out = []
    for _ in range(TEMPLATES):
        events = [{"user_id": f"bench-user-{random.randrange(USERS)}",
                   "emoji_type": random.choice(plan.emojis), "timestamp": "@TS@"}
                  for _ in range(plan.batch)]
        out.append(json.dumps(events, ensure_ascii=False).encode())
    return out


def iso_ms(ms: int) -> bytes:
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
            + f".{ms % 1000:03d}Z").encode()


class Sender:
    """One keep-alive connection posting the plan's requests as their turns come."""

    def __init__(self, plan: LoadPlan, turns, templates: list[bytes], result: LoadResult,
                 lock: threading.Lock, index: int = 0):
        url = urlsplit(plan.url)
        self.plan, self.turns, self.templates, self.result, self.lock = (
            plan, turns, templates, result, lock)
        self.host, self.port, self.path = url.hostname, url.port, url.path
        # Each connection from an address of its own: the API limits events per address.
        host = "127.0.0.1" if self.host == "localhost" else self.host
        self.connection = http.client.HTTPConnection(
            host, self.port, timeout=30, source_address=harness.source_address(host, index))

    def run(self) -> None:
        while (turn := self._next_turn()) is not None:
            due = self.plan.start + turn * self.plan.interval
            time.sleep(max(0.0, due - time.time()))
            self._post(turn, lag=time.time() - due)
        self.connection.close()

    def _next_turn(self) -> int | None:
        with self.lock:
            return next(self.turns, None)

    def _post(self, turn: int, lag: float) -> None:
        send_ms = int(time.time() * 1000)
        body = self.templates[turn % len(self.templates)].replace(PLACEHOLDER, iso_ms(send_ms))
        try:
            reply, answer = self._request(body)
        except (OSError, http.client.HTTPException) as err:
            self.connection.close()
            return self._failed(type(err).__name__)
        accepted_at = time.time()
        if reply.status != 200:
            return self._failed(f"HTTP {reply.status}")
        accepted = json.loads(answer)["accepted"]
        with self.lock:
            self.result.sent.append((send_ms, accepted_at, accepted))
            self.result.refused += self.plan.batch - accepted
            self.result.max_send_lag_s = max(self.result.max_send_lag_s, lag)

    def _request(self, body: str) -> tuple[http.client.HTTPResponse, bytes]:
        """POST ``body``; once more on a new connection when the server had closed the idle
        keep-alive connection (it then never read the request), as HTTP clients do."""
        try:
            return self._request_once(body)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self.connection.close()
            return self._request_once(body)

    def _request_once(self, body: str) -> tuple[http.client.HTTPResponse, bytes]:
        self.connection.request("POST", self.path, body, {"Content-Type": "application/json"})
        reply = self.connection.getresponse()
        return reply, reply.read()

    def _failed(self, error: str) -> None:
        with self.lock:
            self.result.refused += self.plan.batch
            self.result.errors[error] = self.result.errors.get(error, 0) + 1


def generate(plan: LoadPlan) -> LoadResult:
    """Send the plan's requests; runs in the load process."""
    result, lock = LoadResult(sent=[]), threading.Lock()
    turns, templates = iter(range(plan.requests)), bodies(plan)
    cpu_before = time.process_time()
    senders = [Sender(plan, turns, templates, result, lock, index)
               for index in range(plan.connections)]
    threads = [threading.Thread(target=s.run) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.cpu_s = time.process_time() - cpu_before
    result.elapsed_s = max(time.time(), plan.start) - plan.start
    return result


def quiet_worker() -> None:
    """The load process leaves Ctrl-C to the parent, which stops the system."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --- viewers -----------------------------------------------------------------------------------

class Watcher:
    """A viewer registered through the registration API (for the stream "main"); notes every
    update of its stream it gets as window -> [(arrival epoch s, total count)], and counts the
    updates of any other stream (there should be none)."""

    def __init__(self, settings, client_id: str):
        self.window_ms = settings.window_seconds * 1000
        registration = RegistrationClient(topology.registration_url(settings))
        try:
            self.assignment = registration.register(client_id)
        finally:
            registration.close()
        self.stream_id = self.assignment.get("stream_id", DEFAULT_STREAM)
        self.updates: dict[int, list[tuple[float, int]]] = {}
        self.foreign = 0
        self.last_arrival = time.time()
        self.closed_reason: str | None = None
        self.socket = connect(self.assignment["subscriber_endpoint"], open_timeout=30)
        self.thread = threading.Thread(target=self._receive, name=client_id, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        try:
            for text in self.socket:
                arrival = self.last_arrival = time.time()
                update = json.loads(text)
                if update.get("stream_id", DEFAULT_STREAM) != self.stream_id:
                    self.foreign += 1
                    continue
                start_ms = round(parse_timestamp(update["window_start"]).timestamp() * 1000)
                total = sum(a["count"] for a in update["aggregates"])
                self.updates.setdefault(start_ms // self.window_ms, []).append((arrival, total))
        except ConnectionClosed as closed:
            if self.closed_reason is None:
                self.closed_reason = f"connection closed: {closed}"
        if self.closed_reason != CLOSED_BY_US:
            log.error("viewer of %s: %s", self.assignment["cluster_id"],
                      self.closed_reason or "connection closed")

    def last(self, window: int) -> tuple[float, int] | None:
        updates = self.updates.get(window)
        return updates[-1] if updates else None

    def close(self) -> None:
        self.closed_reason = CLOSED_BY_US
        self.socket.close()
        self.thread.join(timeout=5)


# --- one run: load, delivery, figures ----------------------------------------------------------

@dataclass
class RunFigures:
    label: str
    target: int
    seconds: float
    achieved: float
    accepted: int
    refused: int
    windows: int
    exact: int
    latencies_ms: dict[str, float]     # p50, p95, p99, max
    after_end_ms: dict[str, float]     # the same, of the final update after the window's end
    drift_ms: float
    generator_cpu: float
    send_lag_s: float
    errors: dict[str, int]
    failures: list[str] = field(default_factory=list)
    samples: list[tuple[float, int]] = field(default_factory=list, repr=False)  # (ms, events)
    highest: bool = False              # the highest rate that held, found by 'max'
    hops_ms: dict[str, dict] = field(default_factory=dict)  # stage -> p50, p95 after the end

    @property
    def held(self) -> bool:
        return not self.failures


def per_window(sent: list[tuple[int, float, int]], window_ms: int) -> dict[int, list]:
    """window -> [(acceptance epoch s, events)] of the accepted requests."""
    windows: dict[int, list] = {}
    for send_ms, accepted_at, accepted in sent:
        if accepted:
            windows.setdefault(send_ms // window_ms, []).append((accepted_at, accepted))
    return windows


def delivered(windows: dict[int, list], watchers: list[Watcher]) -> bool:
    """Whether every viewer's last update of every window counts all its accepted events."""
    for window, batches in windows.items():
        expected = sum(n for _, n in batches)
        for watcher in watchers:
            last = watcher.last(window)
            if last is None or last[1] != expected:
                return False
    return True


def wait_delivered(windows, watchers, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not delivered(windows, watchers) and time.monotonic() < deadline:
        time.sleep(0.2)


def wait_quiet(watchers: list[Watcher], quiet_s: float, timeout_s: float) -> None:
    """Wait until no viewer got an update for ``quiet_s`` (the aggregator has no backlog left:
    it sends a window only when it changes)."""
    deadline = time.monotonic() + timeout_s
    while (time.time() - max(w.last_arrival for w in watchers) < quiet_s
           and time.monotonic() < deadline):
        time.sleep(0.2)


def weighted_percentile(samples: list[tuple[float, int]], fraction: float) -> float:
    """Nearest-rank percentile of (value, weight) pairs sorted by value."""
    total = sum(w for _, w in samples)
    running = 0
    for value, weight in samples:
        running += weight
        if running >= fraction * total:
            return value
    return samples[-1][0]


def latencies(windows: dict[int, list], watchers: list[Watcher]):
    """(value ms, events) per accepted request and viewer, sorted; and window -> its samples."""
    by_window = {}
    for window, batches in windows.items():
        samples = []
        for watcher in watchers:
            last = watcher.last(window)
            if last is not None:
                samples += [((last[0] - accepted_at) * 1000, n) for accepted_at, n in batches]
        by_window[window] = sorted(samples)
    return sorted(s for samples in by_window.values() for s in samples), by_window


def after_end(windows: dict[int, list], watchers: list[Watcher], window_ms: int) -> list[float]:
    """For each window and viewer, its last update's arrival after the window's end (ms)."""
    return sorted(last[0] * 1000 - (window + 1) * window_ms
                  for window in windows for watcher in watchers
                  if (last := watcher.last(window)) is not None)


def percentiles(samples: list[tuple[float, int]]) -> dict[str, float]:
    """p50, p95, p99 and max of sorted (value, weight) samples; {} without samples."""
    if not samples:
        return {}
    return {**{name: weighted_percentile(samples, f)
               for name, f in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
            "max": samples[-1][0]}


def drift(by_window: dict[int, list]) -> float:
    """Median latency of the last third of the windows minus that of the first third (ms)."""
    ordered = [samples for _, samples in sorted(by_window.items()) if samples]
    if len(ordered) < 3:
        return 0.0
    third = len(ordered) // 3

    def median(groups):
        return weighted_percentile(sorted(s for g in groups for s in g), 0.5)
    return median(ordered[-third:]) - median(ordered[:third])


def exact_windows(windows: dict[int, list], watchers: list[Watcher]) -> int:
    return sum(all((w.last(window) or (0, -1))[1] == sum(n for _, n in batches)
                   for w in watchers)
               for window, batches in windows.items())


def figures(label: str, plan: LoadPlan, load: LoadResult, watchers, window_ms: int,
            limits) -> RunFigures:
    windows = per_window(load.sent, window_ms)
    samples, by_window = latencies(windows, watchers)
    accepted = sum(n for _, _, n in load.sent)
    run = RunFigures(label, plan.rate, plan.seconds, accepted / max(load.elapsed_s, 1e-9),
                     accepted, load.refused, len(windows), exact_windows(windows, watchers),
                     percentiles(samples),
                     percentiles([(ms, 1) for ms in after_end(windows, watchers, window_ms)]),
                     drift(by_window), load.cpu_s / max(load.elapsed_s, 1e-9),
                     load.max_send_lag_s, load.errors, samples=samples)
    run.failures = failures(run, limits)
    return run


def update_times(settings, topic: str, since_s: float, windows: set[int]) -> dict[int, int]:
    """window -> the time (epoch ms) Kafka stamped on its last update of the stream main in
    ``topic``, read from ``since_s`` on."""
    window_ms = settings.window_seconds * 1000
    consumer = kafka_clients.consumer(settings, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p)
                      for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        firsts = consumer.offsets_for_times({tp: int(since_s * 1000) for tp in partitions})
        ends = consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, firsts[tp].offset if firsts.get(tp) else ends[tp])
        last: dict[int, int] = {}
        deadline = time.monotonic() + 30
        while (any(consumer.position(tp) < ends[tp] for tp in partitions)
               and time.monotonic() < deadline):
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    update = json.loads(record.value)
                    if update.get("stream_id", DEFAULT_STREAM) != DEFAULT_STREAM:
                        continue
                    start = parse_timestamp(update["window_start"]).timestamp() * 1000
                    window = round(start) // window_ms
                    if window in windows:
                        last[window] = max(last.get(window, 0), record.timestamp)
        return last
    finally:
        consumer.close()


def hops(settings, start_s: float, windows: dict[int, list], watchers) -> dict[str, dict]:
    """Each stage's p50 and p95 over the windows of the time after the window's end (ms)."""
    window_ms = settings.window_seconds * 1000

    def after(times: dict[int, float]) -> dict[str, float]:
        return percentiles(sorted((t - (w + 1) * window_ms, 1) for w, t in times.items()))

    stages = {"last accepted": after({w: max(t for t, _ in batches) * 1000
                                      for w, batches in windows.items()})}
    for topic in (settings.aggregated_topic, settings.cluster_topic(1),
                  settings.subscribers_topic(1)):
        stages[topic] = after(update_times(settings, topic, start_s - 1, set(windows)))
    stages["viewers"] = percentiles([(ms, 1) for ms in after_end(windows, watchers, window_ms)])
    return stages


def failures(run: RunFigures, limits) -> list[str]:
    found = []
    if run.refused:
        found.append(f"{run.refused:,} events refused ({run.errors or 'partly accepted'})")
    if run.achieved < MIN_ACHIEVED * run.target:
        found.append(f"accepted {run.achieved:,.0f}/s")
    if run.exact < run.windows or not run.windows:
        found.append(f"{run.windows - run.exact} window(s) not delivered exactly")
    if run.latencies_ms.get("p99", math.inf) > limits.max_p99_s * 1000:
        found.append(f"p99 {run.latencies_ms.get('p99', math.inf):,.0f} ms")
    if run.drift_ms > limits.max_drift_s * 1000:
        found.append(f"latency grew {run.drift_ms:,.0f} ms")
    return found


class Bench:
    """The system's endpoints, the viewers, the load process and the memory sampler; ``name``
    (a variant's) prefixes the labels of its runs and phases."""

    def __init__(self, settings, args, watchers, loader, sampler, name: str = ""):
        self.settings, self.args, self.name = settings, args, name
        self.watchers, self.loader, self.sampler = watchers, loader, sampler
        self.window_ms = settings.window_seconds * 1000
        self.runs: list[RunFigures] = []
        self.phases: list[tuple[str, int | None]] = []  # (label, rate; None for the probes)
        self.best: RunFigures | None = None
        self.load_before = os.getloadavg()[0]

    def plan(self, rate: int, seconds: float) -> LoadPlan:
        window_s = self.settings.window_seconds
        start = (math.floor(time.time() / window_s) + 1) * window_s  # the next window boundary
        return LoadPlan(f"http://{self.settings.api_host}:{self.settings.api_port}/emojis",
                        rate, seconds, start, self.args.requests_per_second,
                        self.args.connections, tuple(self.settings.allowed_emojis))

    def load(self, rate: int, seconds: float) -> tuple[LoadPlan, LoadResult]:
        """Run the load, then wait until every window it touched is delivered exactly."""
        plan = self.plan(rate, seconds)
        log.info("%s events/s for %s s: %d requests of %d events over %d connections",
                 f"{rate:,}", seconds, plan.requests, plan.batch, plan.connections)
        result = self.loader.submit(generate, plan).result()
        wait_delivered(per_window(result.sent, self.window_ms), self.watchers,
                       self.args.drain_seconds)
        wait_quiet(self.watchers, QUIET_S, self.args.drain_seconds)
        return plan, result

    def warm_up(self) -> None:
        if self.args.warmup_seconds > 0:
            log.info("warming up (not measured)")
            self.load(WARMUP_RATE, self.args.warmup_seconds)

    def labelled(self, label: str) -> str:
        return f"{self.name}, {label}" if self.name else label

    def run(self, label: str, rate: int, seconds: float, phase: str) -> RunFigures:
        label, phase = self.labelled(label), self.labelled(phase)
        with self.sampler.phase(phase):
            plan, result = self.load(rate, seconds)
        run = figures(label, plan, result, self.watchers, self.window_ms, self.args)
        run.hops_ms = hops(self.settings, plan.start,
                           per_window(result.sent, self.window_ms), self.watchers)
        log.info("%s: %s (latency p50 %s ms, requests sent up to %.2f s behind schedule)",
                 label, "held" if run.held else "did not hold: " + "; ".join(run.failures),
                 f"{run.latencies_ms.get('p50', math.nan):,.0f}", run.send_lag_s)
        self.runs.append(run)
        return run

    def probe_max(self) -> RunFigures | None:
        """The highest-rate run that held: step up from the highest rate that held so far
        until one does not (unless a run already failed above it), then bisect."""
        held = [r for r in self.runs if r.held]
        self.best = max(held, key=lambda r: r.target) if held else None
        low = self.best.target if self.best else 0
        failed = [r.target for r in self.runs if not r.held and r.target > low]
        high = min(failed) if failed else self._step_up(low)
        low = self.best.target if self.best else 0  # the step-up may have raised it
        for _ in range(self.args.probe_refinements if high else 0):
            rate = int(round((low + high) / 2, -2))
            if rate in (low, high):
                break
            if self._probe(rate):
                low = rate
            else:
                high = rate
        if self.best:
            self.best.highest = True
        return self.best

    def _step_up(self, low: int) -> int | None:
        """The first rate that does not hold, from --probe-start (or above ``low``) up."""
        rate = max(self.args.probe_start, int(low * self.args.probe_factor))
        while rate <= self.args.probe_limit:
            if not self._probe(rate):
                return rate
            rate = int(rate * self.args.probe_factor)
        return None

    def _probe(self, rate: int) -> bool:
        run = self.run(f"probe {rate:,}/s", rate, self.args.probe_seconds, "probes")
        if run.held and (self.best is None or rate > self.best.target):
            self.best = run
        return run.held


# --- the reports -------------------------------------------------------------------------------

RUN_HEADERS = ["run", "events/s target", "events/s achieved", "events accepted",
               "events refused", "windows", "exact-count windows", "p50 ms", "p95 ms",
               "p99 ms", "max ms", "after the end p50 / p95 / p99 ms", "window s",
               "load generator CPU (cores)", "held"]


def run_result(run: RunFigures, window_s: int) -> dict:
    """A run's figures; latencies in ms, and their distribution as the percentiles 0 to 100."""
    return {"label": run.label, "target_per_s": run.target, "seconds": run.seconds,
            "achieved_per_s": run.achieved, "accepted": run.accepted, "refused": run.refused,
            "windows": run.windows, "exact_windows": run.exact,
            **{f"{k}_ms": run.latencies_ms.get(k) for k in ("p50", "p95", "p99", "max")},
            "after_end_ms": run.after_end_ms, "hops_ms": run.hops_ms, "window_s": window_s,
            "load_generator_cores": run.generator_cpu,
            "held": run.held, "failures": run.failures, "highest_sustainable": run.highest,
            "drift_ms": run.drift_ms, "send_lag_s": run.send_lag_s, "errors": run.errors,
            "latency_percentiles_ms": [weighted_percentile(run.samples, q / 100)
                                       for q in range(101)] if run.samples else []}


def run_row(run: dict) -> list:
    ms = ["" if run[k] is None else f"{run[k]:,.0f}"
          for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")]
    after = run["after_end_ms"]
    after_end = " / ".join(f"{after[k]:,.0f}" for k in ("p50", "p95", "p99")) if after else ""
    label = run["label"] + (" = highest sustainable" if run["highest_sustainable"] else "")
    return [label, f"{run['target_per_s']:,}", f"{run['achieved_per_s']:,.0f}",
            f"{run['accepted']:,}", f"{run['refused']:,}", run["windows"], run["exact_windows"],
            *ms, after_end, run["window_s"], f"{run['load_generator_cores']:.2f}",
            "yes" if run["held"] else "no: " + "; ".join(run["failures"])]


def hop_rows(runs: list[dict]) -> tuple[list[str], list[list]]:
    """Where the time after a window's end goes: one row per run, one column per stage."""
    stages = list(next((r["hops_ms"] for r in runs if r.get("hops_ms")), {}))
    return (["run", *stages], [
        [r["label"], *(" / ".join(f"{r['hops_ms'][s][k]:,.0f}" for k in ("p50", "p95"))
                       if r["hops_ms"].get(s) else "" for s in stages)]
        for r in runs if r.get("hops_ms")])


def in_table_order(components) -> list[str]:
    """Kafka first, then the others by name."""
    return sorted(components, key=lambda s: (not s.startswith("kafka"), s))


def memory_result(sampler: RssSampler, phases: list[tuple[str, int | None]]) -> list[dict]:
    """Per phase (its label and rate; None for the probes): each component's peak RSS (MiB)
    and process count, and the peak of the whole stack's sum."""
    out = []
    for phase, rate in phases:
        peaks = sampler.peaks.get(phase, {})
        labels = in_table_order(peaks)
        whole = sampler.sum_peaks.get(phase)
        cores = sampler.cpu_cores(phase)
        out.append({"phase": phase, "rate_per_s": rate,
                    "whole_stack_mib": None if whole is None else whole / 1024,
                    "machine_cpu_cores": cores.get(WHOLE_MACHINE),
                    "components": [{"component": label,
                                    "processes": sampler.processes.get(phase, {}).get(label, 0),
                                    "peak_mib": peaks[label] / 1024,
                                    "cpu_cores": cores.get(label)} for label in labels]})
    return out


def memory_rows(memory: list[dict]) -> list[list]:
    labels = in_table_order({c["component"] for m in memory for c in m["components"]})
    by_phase = [{c["component"]: c for c in m["components"]} for m in memory]
    rows = []
    for label in labels:
        count = max(p[label]["processes"] if label in p else 0 for p in by_phase)
        rows.append([label, count] + [mib(p[label]["peak_mib"]) if label in p else ""
                                      for p in by_phase])
    rows.append(["whole stack (peak of the sum)", ""] + [mib(m["whole_stack_mib"])
                                                         for m in memory])
    return rows


def cpu_rows(memory: list[dict]) -> list[list]:
    """Cores each component used per phase, then the whole machine's busy cores."""
    labels = in_table_order({c["component"] for m in memory for c in m["components"]})
    by_phase = [{c["component"]: c.get("cpu_cores") for c in m["components"]} for m in memory]
    return ([[label, *(cores(p.get(label)) for p in by_phase)] for label in labels]
            + [[WHOLE_MACHINE, *(cores(m.get("machine_cpu_cores")) for m in memory)]])


def cores(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def mib(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def setup(bench: Bench) -> dict:
    settings = bench.settings
    return {"requests_per_second": bench.args.requests_per_second,
            "connections": bench.args.connections, "kafka_heap": settings.kafka_heap,
            "spark_driver_memory": settings.spark_driver_memory,
            "shuffle_partitions": settings.spark_shuffle_partitions,
            "trigger_s": settings.spark_trigger_seconds, "spark_master": settings.spark_master}


def setup_text(bench: Bench) -> str:
    s = setup(bench)
    return (f"{bench.name + ': ' if bench.name else ''}Kafka heap {s['kafka_heap']}, Spark "
            f"driver memory {s['spark_driver_memory']}, {s['shuffle_partitions']} shuffle "
            f"partitions, trigger {s['trigger_s']} s, SPARK_MASTER {s['spark_master']}, load "
            f"average (1 min) {bench.load_before:.1f} before its runs.")


def publish(benches: list[Bench], record: harness.Run) -> None:
    """One result file and one table of every variant's runs and memory."""
    first, args = benches[0], benches[0].args
    window_s = first.settings.window_seconds
    bests = [b.best for b in benches if b.best]
    highest = ("Highest sustainable rate found: " + ", ".join(
        f"{b.label} at {b.target:,} events/s" for b in bests) + ". " if bests
        else "No rate held. " if args.probe else "")
    foreign = sum(w.foreign for b in benches for w in b.watchers)
    notes = (f"{highest}Latency: from the API's 200 reply to a viewer receiving the last "
             f"update of the event's window (the window, {window_s} s, is not subtracted), "
             f"over {len(first.watchers)} viewer(s) of the stream main, registered as any "
             f"viewer is (the first variant's on "
             f"{', '.join(w.assignment['cluster_id'] for w in first.watchers)}) "
             f"(updates of other streams they received: {foreign}). Load: "
             f"{args.requests_per_second} POST /emojis per second over {args.connections} "
             f"keep-alive connections, from a process of its own. "
             + " ".join(setup_text(b) for b in benches)
             + f" Load average (1 min) {os.getloadavg()[0]:.1f} at the end, other work "
               "included.")
    runs = [dict(run_result(r, window_s), variant=b.name) for b in benches for r in b.runs]
    memory = [dict(m, variant=b.name) for b in benches for m in memory_result(b.sampler, b.phases)]
    title = "End to end: API acceptance to a viewer's last update of the window"
    harness.print_table(title, RUN_HEADERS, [run_row(r) for r in runs])
    print(notes)
    harness.print_table("End to end: after a window's end, p50 / p95 ms of each stage's last "
                        "update of the window", *hop_rows(runs))
    harness.print_table("End to end: peak resident memory (MiB)",
                        ["component", "processes"] + [f"peak at {m['phase']}" for m in memory],
                        memory_rows(memory))
    print(MEMORY_NOTES)
    harness.print_table("End to end: CPU of each component (cores, averaged over the run)",
                        ["component"] + [m["phase"] for m in memory], cpu_rows(memory))
    record.save(title, {
        "runs": runs, "probed": args.probe,
        "highest_sustainable_per_s": bests[-1].target if bests else None,
        "window_s": window_s, "viewers": len(first.watchers),
        "other_streams_updates": foreign, "memory": memory,
        "variants": {b.name: setup(b) for b in benches} if first.name else {},
        "setup": setup(benches[-1])},
        notes + " " + MEMORY_NOTES)
    draw([r for b in benches for r in b.runs], args)


def draw(runs: list[RunFigures], args) -> None:
    """The latency CDF of every run (--plot) and latency against the rate (--plot-rates)."""
    if args.plot:
        plots.cdf(args.plot, {f"{r.label}{' = highest sustainable' if r.highest else ''} "
                              f"(p99 {r.latencies_ms.get('p99', math.nan):,.0f} ms)":
                              r.samples for r in runs if r.samples},
                  "End to end: API acceptance to a viewer's last update of the window",
                  xlabel="latency (ms)")
    if args.plot_rates:
        ran = [r for r in runs if r.latencies_ms]
        plots.curves(args.plot_rates, {
            name: [(r.achieved, r.latencies_ms[name]) for r in ran]
            for name in ("p50", "p95", "p99")},
            "End to end: latency against the accepted rate (every run)",
            xlabel="events/s accepted", ylabel="latency (ms)")


MEMORY_NOTES = (
    "VmRSS of each component's processes, sampled every 0.5 s during each run (load and "
    "delivery); a component's row is the peak of the sum over its processes (the API's granian "
    "worker processes count pages shared with their parent once each). The last row is the "
    "peak of the simultaneous sum over all components; targets: within 6 GB at 10,000 events/s "
    "and 4 GB at 50,000. CPU: the same processes' user and system time between consecutive "
    "samples over the time sampled; the whole machine's row is every process's (/proc/stat), "
    f"out of {os.cpu_count()} cores.")


# --- main --------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = harness.parser(
        "end_to_end", __doc__,
        epilog="The system runs on free ports with a temporary VAR_DIR; see the module "
               "docstring for the method.")
    parser.add_argument("--rates", default="1000,10000,max",
                        help="events/s per run, comma-separated; 'max' probes for the highest "
                             "sustainable rate (default: 1000,10000,max)")
    parser.add_argument("--seconds", type=float, default=60, help="length of each run")
    parser.add_argument("--requests-per-second", type=int, default=100,
                        help="POST /emojis per second; events per request = rate / this")
    parser.add_argument("--connections", type=int, default=16,
                        help="keep-alive connections of the load process")
    parser.add_argument("--drain-seconds", type=float, default=60,
                        help="how long to wait after a run for its windows' last updates")
    parser.add_argument("--warmup-seconds", type=float, default=60,
                        help=f"an unmeasured run at {WARMUP_RATE}/s first (0: none)")
    parser.add_argument("--probe-start", type=int, default=20_000,
                        help="first rate 'max' tries (default: 20000)")
    parser.add_argument("--probe-factor", type=float, default=1.5,
                        help="'max' multiplies the rate by this while runs hold (default: 1.5)")
    parser.add_argument("--probe-limit", type=int, default=1_000_000,
                        help="highest rate 'max' tries")
    parser.add_argument("--probe-seconds", type=float, default=20,
                        help="length of each run of 'max' (default: 20)")
    parser.add_argument("--probe-refinements", type=int, default=2,
                        help="bisection steps of 'max' once a rate did not hold (default: 2)")
    parser.add_argument("--max-p99-s", type=float, default=10,
                        help="p99 latency above which a rate does not hold")
    parser.add_argument("--max-drift-s", type=float, default=3,
                        help="latency growth over a run above which a rate does not hold")
    parser.add_argument("--var-dir", type=Path,
                        help="keep the system's data and logs in this new or empty folder "
                             "(default: a temporary one, removed afterwards)")
    parser.add_argument("--plot", default=None,
                        help="write a PNG of each run's latency CDF here (e.g. "
                             "docs/end_to_end_latency.png)")
    parser.add_argument("--plot-rates", default=None,
                        help="write a PNG of p50/p95/p99 against the accepted rate here (e.g. "
                             "docs/end_to_end_rates.png)")
    parser.add_argument("--variants", default="defaults:",
                        help="NAME:SETTING=VALUE,...;NAME:... each a system of its own, in turn "
                             "(default: the defaults)")
    args = parser.parse_args(argv)
    args.fixed_rates, args.probe = rates(parser, args.rates)
    args.variant_list = harness.variants(args.variants)
    if args.probe_factor <= 1:
        parser.error("--probe-factor must be above 1")
    if args.var_dir and args.var_dir.exists() and any(args.var_dir.iterdir()):
        parser.error(f"--var-dir {args.var_dir} is not empty")
    return args


def rates(parser, text: str) -> tuple[list[int], bool]:
    items = [r.strip() for r in text.split(",") if r.strip()]
    try:
        fixed = [int(r) for r in items if r != "max"]
    except ValueError:
        parser.error(f"--rates takes whole numbers of events/s and 'max', got {text!r}")
    if any(r <= 0 for r in fixed) or not items:
        parser.error(f"--rates must name at least one rate, each above 0, got {text!r}")
    return fixed, "max" in items


def measure(settings, args, name: str = "") -> Bench:
    """Every run of --rates on one system; the Bench holds their figures."""
    watchers = [Watcher(settings, f"bench-viewer-{n}") for n in settings.clusters]
    log.info("viewers on %s", ", ".join(w.assignment["cluster_id"] for w in watchers))
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(1, mp_context=context, initializer=quiet_worker) as loader, \
                RssSampler(system_pids(settings)) as sampler:
            bench = Bench(settings, args, watchers, loader, sampler, name)
            bench.warm_up()
            for rate in args.fixed_rates:
                label = f"{rate:,}/s"
                bench.run(label, rate, args.seconds, label)
                bench.phases.append((bench.labelled(label), rate))
            if args.probe:
                bench.probe_max()
                if bench.labelled("probes") in sampler.peaks:
                    bench.phases.append((bench.labelled("probes"), None))
            return bench
    finally:
        for watcher in watchers:
            watcher.close()


def interrupt(*_) -> None:
    """SIGTERM stops the benchmark as Ctrl-C does: the system is stopped on the way out."""
    raise KeyboardInterrupt


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: "
                                                   "%(message)s")
    signal.signal(signal.SIGTERM, interrupt)
    record = harness.Run("end_to_end", args)
    named = len(args.variant_list) > 1
    benches = []
    try:
        for name, overrides in args.variant_list:
            log.info("starting the whole system (scripts/start_all.sh)%s",
                     f" for {name}: {overrides or 'defaults'}" if named else "")
            var_dir = args.var_dir / name if args.var_dir and named else args.var_dir
            with harness.overridden_environment(overrides), \
                    whole_system(var_dir) as (_env, settings):
                log.info("system up: ingest %s:%s", settings.api_host, settings.api_port)
                benches.append(measure(settings, args, name if named else ""))
        publish(benches, record)
    except (SystemFailed, RegistrationError, WebSocketException) as err:
        log.error("%s", err)
        raise SystemExit(1) from None
    log.info("system stopped")


if __name__ == "__main__":
    main()
