"""Load client for the delivery tier: N concurrent viewers spread over S streams, the fraction
of them each window update reaches, and how long it takes.

    .venv/bin/python -m bench.viewers_load --viewers 10000 --streams 1 --processes 4
    .venv/bin/python -m bench.viewers_load --layouts 100x1,1x100,100x100,1x10000

It opens N viewer connections the way real viewers do, through the registration API (POST
/register for a stream, then the WebSocket endpoint with its token, which binds the stream),
spread round-robin over --streams streams ("main", bench-1, bench-2, ...) and over --processes
processes of asyncio clients (each raises its open-file limit). Then it acts as the subscribers:
it connects to every cluster's /publish with the subscriber key and publishes --updates
windows, one every --interval seconds, an update of each for every stream ({"stream_id": ...,
"window_start": ...}), noting each hand-over time (time.time() just before each send). Every
viewer notes when each update of its stream reached it, and counts any update of another
stream (there should be none: a server sends an update only to its stream's viewers). Viewers
and publisher run on the same machine, so their clocks agree. It reports per layout how many
deliveries arrived and the delay percentiles, and writes the run's file under bench/results/
(--plot: a PNG of each layout's delay CDF).

--layouts measures several layouts (STREAMSxVIEWERS_PER_STREAM) one after the other on one
system in one run, e.g. 100 streams of 1 viewer against 1 stream of 100 viewers; --trials
repeats them, the order reversed every other time.

By default it starts the system it measures itself: a registration API (STREAMS listing the
streams) and --clusters WebSocket servers on free ports with a temporary VAR_DIR and fresh
secrets, stopped by pid at the end. --registration-url points it at a running system instead
(the subscriber key then comes from SUBSCRIBER_KEY or VAR_DIR/secrets/subscriber.key, and the
clusters from GET /clusters). --clusters 1 puts every viewer on one WebSocket server.

The viewer side (register_all, open_viewers, Viewer) and publish are also what
tests/test_delivery.py uses for its 1,000-viewer test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import multiprocessing
import os
import secrets as random_tokens
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from bench import harness, plots
from emojistream import config, topology
from emojistream.common.events import DEFAULT_STREAM, format_timestamp, parse_timestamp
from emojistream.common.lifecycle import raise_open_file_limit
from testkit.processes import Service, ServiceFailed, get_json, stop_all, wait_for_health
from testkit.sandbox import isolated_env

log = logging.getLogger("viewers_load")

REGISTER_THREADS = 8        # concurrent POST /register per process
CONNECT_CONCURRENCY = 200   # WebSocket handshakes in flight per process
CONNECT_TIMEOUT_S = 60.0
CONNECT_ATTEMPTS = 3


# --- the viewer side --------------------------------------------------------------------------

def register_all(registration_url: str, client_ids: list[str],
                 threads: int = REGISTER_THREADS, streams: list[str] | None = None) -> list[dict]:
    """POST /register for each client id (``threads`` at a time), for the stream of the same
    index in ``streams`` (default: none named, "main"); the assignments, in order. Raises
    RuntimeError naming the first refusal."""
    local = threading.local()
    bodies = [{"client_id": c} if streams is None else {"client_id": c, "stream_id": s}
              for c, s in zip(client_ids, streams or client_ids, strict=True)]

    def register(body: dict) -> dict:
        client_id = body["client_id"]
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        for attempt in range(5):
            answer = session.post(f"{registration_url}/register", json=body, timeout=30)
            if answer.status_code != 503:
                break
            time.sleep(0.5 * (attempt + 1))  # no cluster available (yet): try again shortly
        if answer.status_code != 200:
            raise RuntimeError(f"/register of {client_id!r} answered {answer.status_code}: "
                               f"{answer.text[:200]}")
        return dict(answer.json(), client_id=client_id)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(register, bodies))


@dataclass
class Viewer:
    """One viewer connection and what it received of its stream: window start -> receipt
    times; updates of any other stream are only counted (``foreign``): there should be none."""

    client_id: str
    cluster_id: str
    endpoint: str
    stream_id: str = DEFAULT_STREAM
    received: dict[str, list[float]] = field(default_factory=dict)
    foreign: int = 0
    connected: bool = False
    error: str | None = None
    close_code: int | None = None
    _connection: object = None
    _task: asyncio.Task | None = None

    async def run(self, gate: asyncio.Semaphore, opened: asyncio.Event | None = None) -> None:
        """Connect (``gate`` limits handshakes in flight), then record every message until the
        connection closes or the task is cancelled."""
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                async with gate:
                    self._connection = await connect(
                        self.endpoint, open_timeout=CONNECT_TIMEOUT_S, ping_interval=None,
                        close_timeout=1, compression=None, max_queue=None)
                break
            except (OSError, WebSocketException, TimeoutError) as err:
                self.error = f"{type(err).__name__}: {err}"
                await asyncio.sleep(0.5 * (attempt + 1))
        else:
            return
        self.connected, self.error = True, None
        try:
            async for message in self._connection:
                self._note(json.loads(message), time.time())
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self._connection.close_code

    def _note(self, update: dict, now: float) -> None:
        if update.get("stream_id", DEFAULT_STREAM) != self.stream_id:
            self.foreign += 1
        else:
            self.received.setdefault(update["window_start"], []).append(now)

    def start(self, gate: asyncio.Semaphore) -> None:
        self._task = asyncio.create_task(self.run(gate))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._connection is not None:
            self._connection.transport.abort()  # many at once: no closing handshakes

    def summary(self) -> tuple:
        return (self.client_id, self.cluster_id, self.connected, self.error, self.received,
                self.stream_id, self.foreign)


async def open_viewers(assignments: list[dict], concurrency: int = CONNECT_CONCURRENCY,
                       timeout_s: float = 120) -> list[Viewer]:
    """A Viewer per assignment, each connecting and recording in a task of its own; returns
    once every one is connected or has given up (or after ``timeout_s``)."""
    gate = asyncio.Semaphore(concurrency)
    viewers = [Viewer(a["client_id"], a["cluster_id"], a["subscriber_endpoint"],
                      a.get("stream_id", DEFAULT_STREAM)) for a in assignments]
    for viewer in viewers:
        viewer.start(gate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(v.connected or (v._task is not None and v._task.done()) for v in viewers):
            break
        await asyncio.sleep(0.1)
    return viewers


async def close_viewers(viewers: list[Viewer]) -> None:
    for viewer in viewers:
        await viewer.close()
    await asyncio.gather(*(v._task for v in viewers if v._task is not None),
                         return_exceptions=True)


def _worker(index: int, registration_url: str, client_ids: list[str], pipe,
            streams: list[str] | None = None) -> None:
    """A viewer process: registers and connects its share, reports, waits for "stop", then
    sends back what each viewer received."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    limit = raise_open_file_limit()
    started = time.monotonic()
    try:
        assignments = register_all(registration_url, client_ids, streams=streams)
    except Exception as err:  # reported to the parent, which stops
        pipe.send(("failed", f"process {index}: {err}"))
        return
    registered_s = time.monotonic() - started

    async def main():
        viewers = await open_viewers(assignments)
        connected = sum(v.connected for v in viewers)
        errors = sorted({v.error for v in viewers if v.error})[:3]
        pipe.send(("ready", {"connected": connected, "registered_s": registered_s,
                             "connected_s": time.monotonic() - started, "errors": errors,
                             "open_file_limit": limit}))
        await asyncio.to_thread(pipe.recv)  # "stop"
        summaries = [v.summary() for v in viewers]
        await close_viewers(viewers)
        return summaries

    pipe.send(("results", asyncio.run(main())))


# --- the system under test --------------------------------------------------------------------

def stream_ids(count: int) -> list[str]:
    """The streams of a layout of ``count`` streams: "main" first, then bench-1, bench-2, ..."""
    return [DEFAULT_STREAM] + [f"bench-{i}" for i in range(1, count)]


class System:
    """A registration API and the WebSocket servers, started on free ports in a temporary
    VAR_DIR, each stopped by its pid; STREAMS lists ``streams``."""

    def __init__(self, clusters: int, log_dir: str | None = None, log_level: str = "WARNING",
                 streams: int = 1):
        self._dir = tempfile.TemporaryDirectory(prefix="viewers-load-")
        var_dir = Path(self._dir.name)
        self.env = isolated_env(var_dir, cluster_count=clusters)
        self.key = random_tokens.token_urlsafe(32)
        self.env.update(SUBSCRIBER_KEY=self.key, TOKEN_SECRET=random_tokens.token_urlsafe(32),
                        REGISTRATION_THREADS="16", LOG_LEVEL=log_level,
                        STREAMS=",".join(stream_ids(streams)))
        self.settings = config.load(self.env)
        self.registration_url = topology.registration_url(self.settings)
        self.log_dir = Path(log_dir) if log_dir else var_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.services: list[Service] = []

    def start(self) -> None:
        for n in self.settings.clusters:
            self._start(f"ws_server_{n}", "ws_server.py", "--cluster", str(n))
        registration = self._start("registration_api", "registration_api.py")
        wait_for_health(f"{self.registration_url}/health", *self.services, timeout_s=60)
        deadline = time.monotonic() + 60
        while not all(c["healthy"] for c in get_json(f"{self.registration_url}/clusters")[1]):
            if time.monotonic() > deadline or not registration.running():
                raise ServiceFailed(f"not every cluster came up in 60 s; see {self.log_dir}")
            time.sleep(0.3)

    def _start(self, name: str, *args: str) -> Service:
        service = Service(self.log_dir, name, *args, env=self.env)
        self.services.append(service)
        return service

    def stop(self) -> None:
        stop_all(self.services)
        self._dir.cleanup()


def publish_urls(registration_url: str, settings) -> dict[str, str]:
    """cluster id -> its publish listener's /publish URL (from the settings; the clusters of
    GET /clusters)."""
    answer = requests.get(f"{registration_url}/clusters", timeout=10)
    answer.raise_for_status()
    return {c["cluster_id"]: topology.ws_publish_url(settings, int(c["cluster_id"][7:]))
            for c in answer.json()}


def health_url(publish_url: str) -> str:
    return publish_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1) \
        .removesuffix("/publish") + "/health"


def live_viewers(urls: dict[str, str]) -> dict[str, int]:
    """cluster id -> its live viewer connections (GET /health)."""
    return {cluster: requests.get(health_url(url), timeout=30).json()["viewers"]
            for cluster, url in urls.items()}


# --- the publisher ----------------------------------------------------------------------------

def window_update(start: datetime, number: int, stream_id: str = DEFAULT_STREAM) -> str:
    end = start + timedelta(seconds=2)
    return json.dumps({"stream_id": stream_id, "window_start": format_timestamp(start),
                       "window_end": format_timestamp(end),
                       "aggregates": [{"emoji_type": "🔥", "count": 100 + number,
                                       "normalized_count": 2, "unique_users": 50},
                                      {"emoji_type": "😂", "count": 7, "normalized_count": 0,
                                       "unique_users": 7}]},
                      ensure_ascii=False, separators=(",", ":"))


def first_window(after: datetime | None = None) -> datetime:
    """The window starting now (rounded down to 2 s), or just after ``after`` if later."""
    now = datetime.now(UTC)
    first = now.replace(microsecond=0) - timedelta(seconds=now.second % 2)
    return max(first, after + timedelta(seconds=2)) if after else first


def publish(urls: dict[str, str], key: str, updates: int, interval_s: float,
            streams: tuple[str, ...] = (DEFAULT_STREAM,), first: datetime | None = None
            ) -> tuple[list[str], dict[str, dict[tuple[str, str], float]], list[float]]:
    """Publish ``updates`` windows, an update of each for every stream, to every cluster; the
    windows, the hand-over time of each (stream, window) on each cluster, and the time each
    server took to answer GET /health right after (how long the broadcasts held its event loop,
    plus the request). Windows start at ``first`` (default: now)."""
    from websockets.sync.client import connect as sync_connect
    headers = {"Authorization": f"Bearer {key}"}
    stack = ExitStack()
    connections = {cluster: stack.enter_context(sync_connect(
        url, additional_headers=headers, open_timeout=10, compression=None))
        for cluster, url in urls.items()}
    session = requests.Session()
    handed_over: dict[str, dict[tuple[str, str], float]] = {cluster: {} for cluster in urls}
    health_s: list[float] = []
    first = first or first_window()
    windows = []
    try:
        next_at = time.monotonic()
        for number in range(updates):
            start = first + timedelta(seconds=2 * number)
            windows.append(format_timestamp(start))
            for stream in streams:
                message = window_update(start, number, stream)
                for cluster, connection in connections.items():
                    handed_over[cluster][(stream, windows[-1])] = time.time()
                    connection.send(message)
            for url in urls.values():
                asked = time.monotonic()
                session.get(health_url(url), timeout=30)
                health_s.append(time.monotonic() - asked)
            next_at += interval_s
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        stack.close()
        session.close()
    return windows, handed_over, health_s


# --- figures ----------------------------------------------------------------------------------

def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def delays_ms(values: list[float]) -> dict[str, float | None]:
    """p50, p95, p99 and max of delays in seconds, in ms (None without delays)."""
    ordered = sorted(values)
    if not ordered:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": 1000 * percentile(ordered, 0.5), "p95_ms": 1000 * percentile(ordered, 0.95),
            "p99_ms": 1000 * percentile(ordered, 0.99), "max_ms": 1000 * ordered[-1]}


def analyse(summaries: list[tuple], windows: list[str], handed_over: dict) -> dict:
    """Per-update figures from every viewer's receipts (of its own stream), and under
    "foreign" the updates of other streams viewers received."""
    per_window = {w: {"got": 0, "duplicates": 0, "delays": []} for w in windows}
    foreign = 0
    for _client, cluster, _connected, _error, received, stream, wrong in summaries:
        foreign += wrong
        for window, times in received.items():
            if window not in per_window:
                continue
            entry = per_window[window]
            entry["got"] += 1
            entry["duplicates"] += len(times) - 1
            entry["delays"].append(times[0] - handed_over[cluster][(stream, window)])
    return {"windows": per_window, "foreign": foreign}


# --- one layout: S streams, V viewers spread over them ----------------------------------------

@dataclass
class Layout:
    streams: int
    viewers: int         # in all, spread round-robin over the streams

    @property
    def label(self) -> str:
        return f"{self.streams:,} stream(s) x {self.viewers // self.streams:,} viewer(s)"


@dataclass
class LayoutRun:
    layout: Layout
    connected: int
    connect_s: float
    per_cluster: dict[str, int]   # live viewer connections per cluster once connected
    windows: list[str]
    figures: dict
    health_s: list[float]


def start_workers(args, registration_url: str, layout: Layout, run_id: str) -> list:
    """Viewer processes, each registering and connecting its share of the layout's viewers."""
    streams = stream_ids(layout.streams)
    client_ids = [f"load-{run_id}-{i}" for i in range(layout.viewers)]
    stream_of = [streams[i % layout.streams] for i in range(layout.viewers)]
    processes = min(args.processes, layout.viewers)
    context = multiprocessing.get_context("spawn")
    workers = []
    for index in range(processes):
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_worker, daemon=True, args=(
            index, registration_url, client_ids[index::processes], child_end,
            stream_of[index::processes]))
        process.start()
        workers.append((process, parent_end))
    return workers


def wait_ready(workers: list) -> list[dict]:
    ready = []
    for _process, pipe in workers:
        kind, payload = pipe.recv()
        if kind == "failed":
            raise RuntimeError(payload)
        ready.append(payload)
    return ready


def collect(workers: list) -> list[tuple]:
    for _process, pipe in workers:
        pipe.send("stop")
    summaries = []
    for _process, pipe in workers:
        _kind, payload = pipe.recv()
        summaries.extend(payload)
    return summaries


def join_workers(workers: list) -> None:
    for process, _pipe in workers:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()


def wait_drained(urls: dict[str, str], timeout_s: float = 60) -> None:
    """Until the servers hold no viewer connection (the previous layout's are gone)."""
    deadline = time.monotonic() + timeout_s
    while sum(live_viewers(urls).values()) and time.monotonic() < deadline:
        time.sleep(0.5)


def run_layout(args, registration_url: str, key: str, urls: dict[str, str], layout: Layout,
               after: datetime | None) -> LayoutRun:
    """Connect the layout's viewers, publish windows after ``after`` (the previous layout's
    last), collect what the viewers received."""
    wait_drained(urls)
    started = time.monotonic()
    log.info("%s: registering and connecting %s viewers from %d process(es)", layout.label,
             f"{layout.viewers:,}", min(args.processes, layout.viewers))
    workers = start_workers(args, registration_url, layout, random_tokens.token_hex(3))
    try:
        ready = wait_ready(workers)
        connect_s = time.monotonic() - started
        connected = sum(r["connected"] for r in ready)
        for error in (e for r in ready for e in r["errors"]):
            log.warning("connection error: %s", error)
        per_cluster = live_viewers(urls)
        log.info("%s/%s viewers connected in %.1f s (%s)", f"{connected:,}",
                 f"{layout.viewers:,}", connect_s,
                 ", ".join(f"{c} {n:,}" for c, n in per_cluster.items()))
        windows, handed_over, health_s = publish(
            urls, key, args.updates, args.interval, tuple(stream_ids(layout.streams)),
            first_window(after))
        time.sleep(args.grace)
        figures = analyse(collect(workers), windows, handed_over)
    finally:
        join_workers(workers)
    return LayoutRun(layout, connected, connect_s, per_cluster, windows, figures, health_s)


def run(args: argparse.Namespace) -> int:
    record = harness.Run("viewers_load", args)
    limit = raise_open_file_limit()
    load_before = os.getloadavg()[0]
    system = None
    try:
        if args.registration_url:
            registration_url = args.registration_url.rstrip("/")
            from emojistream.common import secrets
            key = secrets.subscriber_key(config.load())
        else:
            system = System(args.clusters, args.log_dir, args.log_level,
                            max(layout.streams for layout in args.layouts))
            log.info("starting a registration API and %d WebSocket server(s) (logs in %s)",
                     args.clusters, system.log_dir)
            system.start()
            registration_url, key = system.registration_url, system.key
        urls = publish_urls(registration_url, system.settings if system else config.load())
        runs, last = [], None
        for trial in range(args.trials):
            order = args.layouts if trial % 2 == 0 else args.layouts[::-1]
            for layout in order:
                runs.append(run_layout(args, registration_url, key, urls, layout, last))
                last = parse_timestamp(runs[-1].windows[-1])
        report(args, record, runs, limit, len(urls), (load_before, os.getloadavg()[0]))
        return 0
    finally:
        if system is not None:
            system.stop()


# --- the report -------------------------------------------------------------------------------

def layout_result(run: LayoutRun) -> dict:
    """The layout's figures: deliveries, delays (ms), health answers, and each window's."""
    per_window = run.figures["windows"]
    delays = [d for entry in per_window.values() for d in entry["delays"]]
    got = sum(entry["got"] for entry in per_window.values())
    expected = run.layout.viewers * len(run.windows)
    health = sorted(run.health_s)
    return {"layout": run.layout.label, "streams": run.layout.streams,
            "viewers_per_stream": run.layout.viewers // run.layout.streams,
            "viewers": run.layout.viewers, "connected": run.connected, "deliveries": got,
            "expected_deliveries": expected, "fraction": got / expected if expected else None,
            **delays_ms(delays),
            "duplicates": sum(entry["duplicates"] for entry in per_window.values()),
            "other_streams_updates": run.figures["foreign"],
            "health_p50_ms": 1000 * percentile(health, 0.5) if health else None,
            "health_max_ms": 1000 * health[-1] if health else None,
            "connect_s": run.connect_s, "per_cluster": run.per_cluster,
            "windows": [{"window_start": window, "viewers_reached": entry["got"],
                         "duplicates": entry["duplicates"], **delays_ms(entry["delays"])}
                        for window, entry in per_window.items()]}


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def layout_row(layout: dict) -> list:
    fraction = layout["fraction"]
    return [layout["layout"], f"{layout['viewers']:,}", f"{layout['connected']:,}",
            f"{layout['deliveries']:,}/{layout['expected_deliveries']:,}",
            "-" if fraction is None else f"{100 * fraction:.2f}%",
            *(ms(layout[k]) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")),
            layout["duplicates"], layout["other_streams_updates"],
            f"{ms(layout['health_p50_ms'])} / {ms(layout['health_max_ms'])}",
            f"{layout['connect_s']:.1f}"]


HEADERS = ["layout", "viewers", "connected", "deliveries", "fraction", "p50 ms", "p95 ms",
           "p99 ms", "max ms", "duplicates", "other streams' updates received",
           "GET /health p50 / max ms", "connect s"]


def report(args, record: harness.Run, runs: list[LayoutRun], limit: int, servers: int,
           load: tuple[float, float]) -> None:
    import websockets
    notes = (f"Per layout: {args.updates} windows published, one every {args.interval} s, an "
             f"update of each window for every stream (S streams: S updates per window), to "
             f"each of {servers} WebSocket server(s); viewers registered through POST /register "
             f"for their stream (round-robin), from {args.processes} process(es). Delay: from "
             f"the publisher handing a stream's update to a server's /publish (as a subscriber "
             f"does) to a viewer of that stream receiving it, viewers and servers on the same "
             f"machine. GET /health was sent to each server right after each window's "
             f"hand-overs, while it broadcast. Layouts in this order, {args.trials} trial(s), "
             f"the order reversed every other trial. Load average (1 min) {load[0]:.1f} "
             f"before the run, {load[1]:.1f} at the end, other work included. websockets "
             f"{websockets.__version__}; open-file limit {limit}.")
    title = f"Viewers over streams: {', '.join(layout.label for layout in args.layouts)}"
    layouts = [layout_result(run) for run in runs]
    harness.print_table(title, HEADERS, [layout_row(layout) for layout in layouts])
    print(notes)
    record.save(title, {"layouts": layouts, "servers": servers, "open_file_limit": limit,
                        "websockets": websockets.__version__}, notes)
    if args.plot:
        plots.cdf(args.plot, {f"{run.layout.label} ({run.layout.viewers:,})": [
            (1000 * d, 1) for entry in run.figures["windows"].values() for d in entry["delays"]]
            for run in runs}, "Hand-over to a viewer's receipt, per layout",
            xlabel="delay (ms)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def layouts(text: str) -> list[Layout]:
    """"100x1,1x100": STREAMS x VIEWERS-PER-STREAM, comma-separated."""
    found = []
    for item in text.split(","):
        try:
            streams, per_stream = (positive_int(n) for n in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"a layout is STREAMSxVIEWERS_PER_STREAM, e.g. 100x1; got {item!r}") from None
        found.append(Layout(streams, streams * per_stream))
    return found


def parse_args(argv=None) -> argparse.Namespace:
    parser = harness.parser("viewers_load", __doc__)
    parser.description = ("Open N concurrent viewers through the registration API, spread over "
                          "--streams streams, publish window updates as a subscriber would, and "
                          "report the fraction of viewers reached and the hand-over-to-receipt "
                          "delay (p50/p95/p99/max); --layouts compares several spreads in one "
                          "run.")
    parser.add_argument("--viewers", type=positive_int, default=10_000,
                        help="concurrent viewer connections (default 10000)")
    parser.add_argument("--streams", type=positive_int, default=1,
                        help="streams the viewers are spread over, round-robin (default 1)")
    parser.add_argument("--layouts", type=layouts, default=None,
                        help="instead of --viewers and --streams: several layouts measured in "
                             "one run on one system, STREAMSxVIEWERS_PER_STREAM, e.g. "
                             "100x1,1x100,100x100,1x10000")
    parser.add_argument("--trials", type=positive_int, default=1,
                        help="times to measure every layout, the order reversed every other "
                             "time (default 1)")
    parser.add_argument("--processes", type=positive_int, default=4,
                        help="viewer processes, asyncio clients each (default 4)")
    parser.add_argument("--updates", type=positive_int, default=20,
                        help="windows to publish per layout (default 20)")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between windows (default 2, the window length)")
    parser.add_argument("--clusters", type=positive_int, default=3,
                        help="WebSocket servers of the system it starts (default 3; 1 puts "
                             "every viewer on one server)")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds to wait for the last update after sending it (default 5)")
    parser.add_argument("--registration-url", default=None,
                        help="measure a running system at this registration API instead of "
                             "starting one (its streams must include those of the layouts)")
    parser.add_argument("--log-dir", default=None,
                        help="keep the started system's logs in this folder (default: a "
                             "temporary one, deleted)")
    parser.add_argument("--log-level", default="WARNING",
                        help="LOG_LEVEL of the started system (default WARNING; DEBUG logs "
                             "each broadcast's duration)")
    parser.add_argument("--plot", default=None,
                        help="write a PNG of the delay CDF of each layout here (e.g. "
                             "docs/viewers_streams.png)")
    args = parser.parse_args(argv)
    if args.layouts is None:
        if args.streams > args.viewers:
            parser.error("--streams must not exceed --viewers")
        args.layouts = [Layout(args.streams, args.viewers)]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: "
                                                   "%(message)s")
    try:
        return run(args)
    except (RuntimeError, OSError, requests.RequestException) as err:
        log.error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
