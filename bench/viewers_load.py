"""Load client for the delivery tier: N concurrent viewers, the fraction of them each window
update reaches, and how long it takes.

    .venv/bin/python bench/viewers_load.py --viewers 10000 --processes 4 --updates 20 --interval 2

It opens N viewer connections the way real viewers do, through the registration API (POST
/register, then the WebSocket endpoint with its token), spread over --processes processes of
asyncio clients (each raises its open-file limit). Then it acts as the subscribers: it connects
to every cluster's /publish with the subscriber key and publishes --updates synthetic window
updates (distinct windows), one every --interval seconds, noting the hand-over time
(time.time() just before each send). Every viewer notes when each update reached it; viewers and
publisher run on the same machine, so their clocks agree. It reports, per update, how many
viewers got it and the delay percentiles, then overall figures, and appends them to
docs/benchmarks.md (--no-report: print only).

By default it starts the system it measures itself: a registration API and --clusters WebSocket
servers on free ports with a temporary VAR_DIR and fresh secrets, stopped by pid at the end.
--registration-url points it at a running system instead (the subscriber key then comes from
SUBSCRIBER_KEY or VAR_DIR/secrets/subscriber.key, and the clusters from GET /clusters).
--clusters 1 puts every viewer on one WebSocket server.

The viewer side (register_all, open_viewers, Viewer) is also what tests/test_delivery.py uses
for its 1,000-viewer test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from bench import harness
from emojistream import config
from emojistream.events import format_timestamp
from emojistream.lifecycle import raise_open_file_limit
from testkit.processes import Service, ServiceFailed, get_json, stop_all, wait_for_health
from testkit.sandbox import isolated_env

REGISTER_THREADS = 8        # concurrent POST /register per process
CONNECT_CONCURRENCY = 200   # WebSocket handshakes in flight per process
CONNECT_TIMEOUT_S = 60.0
CONNECT_ATTEMPTS = 3


# --- the viewer side --------------------------------------------------------------------------

def register_all(registration_url: str, client_ids: list[str],
                 threads: int = REGISTER_THREADS) -> list[dict]:
    """POST /register for each client id (``threads`` at a time); the assignments, in order.
    Raises RuntimeError naming the first refusal."""
    local = threading.local()

    def register(client_id: str) -> dict:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        for attempt in range(5):
            answer = session.post(f"{registration_url}/register", json={"client_id": client_id},
                                  timeout=30)
            if answer.status_code != 503:
                break
            time.sleep(0.5 * (attempt + 1))  # no cluster available (yet): try again shortly
        if answer.status_code != 200:
            raise RuntimeError(f"/register of {client_id!r} answered {answer.status_code}: "
                               f"{answer.text[:200]}")
        return dict(answer.json(), client_id=client_id)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(register, client_ids))


@dataclass
class Viewer:
    """One viewer connection and what it received: window start -> receipt times."""

    client_id: str
    cluster_id: str
    endpoint: str
    received: dict[str, list[float]] = field(default_factory=dict)
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
                now = time.time()
                window = json.loads(message)["window_start"]
                self.received.setdefault(window, []).append(now)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self._connection.close_code

    def start(self, gate: asyncio.Semaphore) -> None:
        self._task = asyncio.create_task(self.run(gate))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._connection is not None:
            self._connection.transport.abort()  # many at once: no closing handshakes

    def summary(self) -> tuple:
        return (self.client_id, self.cluster_id, self.connected, self.error, self.received)


async def open_viewers(assignments: list[dict], concurrency: int = CONNECT_CONCURRENCY,
                       timeout_s: float = 120) -> list[Viewer]:
    """A Viewer per assignment, each connecting and recording in a task of its own; returns
    once every one is connected or has given up (or after ``timeout_s``)."""
    gate = asyncio.Semaphore(concurrency)
    viewers = [Viewer(a["client_id"], a["cluster_id"], a["subscriber_endpoint"])
               for a in assignments]
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


def _worker(index: int, registration_url: str, client_ids: list[str], pipe) -> None:
    """A viewer process: registers and connects its share, reports, waits for "stop", then
    sends back what each viewer received."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    limit = raise_open_file_limit()
    started = time.monotonic()
    try:
        assignments = register_all(registration_url, client_ids)
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

class System:
    """A registration API and the WebSocket servers, started on free ports in a temporary
    VAR_DIR, each stopped by its pid."""

    def __init__(self, clusters: int, log_dir: str | None = None, log_level: str = "WARNING"):
        self._dir = tempfile.TemporaryDirectory(prefix="viewers-load-")
        var_dir = Path(self._dir.name)
        self.env = isolated_env(var_dir, cluster_count=clusters)
        self.key = random_tokens.token_urlsafe(32)
        self.env.update(SUBSCRIBER_KEY=self.key, TOKEN_SECRET=random_tokens.token_urlsafe(32),
                        REGISTRATION_THREADS="16", LOG_LEVEL=log_level)
        self.settings = config.load(self.env)
        self.registration_url = self.settings.registration_url()
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


def publish_urls(registration_url: str) -> dict[str, str]:
    """cluster id -> its /publish URL, from GET /clusters."""
    answer = requests.get(f"{registration_url}/clusters", timeout=10)
    answer.raise_for_status()
    return {c["cluster_id"]: c["endpoint"].split("?")[0].rstrip("/") + "/publish"
            for c in answer.json()}


def health_url(publish_url: str) -> str:
    return publish_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1) \
        .removesuffix("/publish") + "/health"


# --- the publisher ----------------------------------------------------------------------------

def window_update(start: datetime, number: int) -> str:
    end = start + timedelta(seconds=2)
    return json.dumps({"window_start": format_timestamp(start),
                       "window_end": format_timestamp(end),
                       "aggregates": [{"emoji_type": "🔥", "count": 100 + number,
                                       "normalized_count": 2, "unique_users": 50},
                                      {"emoji_type": "😂", "count": 7, "normalized_count": 0,
                                       "unique_users": 7}]},
                      ensure_ascii=False, separators=(",", ":"))


def publish(urls: dict[str, str], key: str, updates: int, interval_s: float
            ) -> tuple[list[str], dict[str, dict[str, float]], list[float]]:
    """Publish ``updates`` updates to every cluster; the windows, the hand-over time of each
    window on each cluster, and the time each server took to answer GET /health right after
    (how long the broadcast held its event loop, plus the request)."""
    from websockets.sync.client import connect as sync_connect
    headers = {"Authorization": f"Bearer {key}"}
    stack = ExitStack()
    connections = {cluster: stack.enter_context(sync_connect(
        url, additional_headers=headers, open_timeout=10, compression=None))
        for cluster, url in urls.items()}
    session = requests.Session()
    handed_over: dict[str, dict[str, float]] = {cluster: {} for cluster in urls}
    health_s: list[float] = []
    now = datetime.now(UTC)
    first = now.replace(microsecond=0) - timedelta(seconds=now.second % 2)
    windows = []
    try:
        next_at = time.monotonic()
        for number in range(updates):
            start = first + timedelta(seconds=2 * number)
            message = window_update(start, number)
            window = format_timestamp(start)
            windows.append(window)
            for cluster, connection in connections.items():
                handed_over[cluster][window] = time.time()
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


def delays_ms(values: list[float]) -> list[str]:
    ordered = sorted(values)
    return [f"{1000 * percentile(ordered, q):,.0f}" for q in (0.5, 0.95, 0.99)] + \
        [f"{1000 * ordered[-1]:,.0f}" if ordered else "-"]


def analyse(summaries: list[tuple], windows: list[str], handed_over: dict) -> dict:
    """Per-update and overall figures from every viewer's receipts."""
    per_window = {w: {"got": 0, "duplicates": 0, "delays": []} for w in windows}
    for _client, cluster, _connected, _error, received in summaries:
        for window, times in received.items():
            if window not in per_window:
                continue
            entry = per_window[window]
            entry["got"] += 1
            entry["duplicates"] += len(times) - 1
            entry["delays"].append(times[0] - handed_over[cluster][window])
    return per_window


def run(args: argparse.Namespace) -> int:
    limit = raise_open_file_limit()
    load_before = os.getloadavg()[0]
    system = None
    workers: list = []
    try:
        if args.registration_url:
            registration_url = args.registration_url.rstrip("/")
            from emojistream import secrets
            key = secrets.subscriber_key(config.load())
        else:
            system = System(args.clusters, args.log_dir, args.log_level)
            print(f"starting a registration API and {args.clusters} WebSocket server(s) "
                  f"(logs in {system.log_dir})", flush=True)
            system.start()
            registration_url, key = system.registration_url, system.key
        urls = publish_urls(registration_url)

        run_id = random_tokens.token_hex(3)
        client_ids = [f"load-{run_id}-{i}" for i in range(args.viewers)]
        shares = [client_ids[i::args.processes] for i in range(args.processes)]
        context = multiprocessing.get_context("spawn")
        started = time.monotonic()
        print(f"registering and connecting {args.viewers:,} viewers from {args.processes} "
              f"process(es)", flush=True)
        for index, share in enumerate(shares):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_worker, args=(index, registration_url, share,
                                                            child_end), daemon=True)
            process.start()
            workers.append((process, parent_end))
        ready = []
        for _process, pipe in workers:
            kind, payload = pipe.recv()
            if kind == "failed":
                raise RuntimeError(payload)
            ready.append(payload)
        connect_s = time.monotonic() - started
        connected = sum(r["connected"] for r in ready)
        print(f"{connected:,}/{args.viewers:,} viewers connected in {connect_s:.1f} s "
              f"(registration took {max(r['registered_s'] for r in ready):.1f} s)", flush=True)
        for errors in (r["errors"] for r in ready):
            for error in errors:
                print(f"  connection error: {error}", flush=True)
        spread = ", ".join(
            f"{cluster} {requests.get(health_url(url), timeout=30).json()['viewers']:,}"
            for cluster, url in urls.items())
        print(f"live viewer connections (GET /health): {spread}", flush=True)

        windows, handed_over, health_s = publish(urls, key, args.updates, args.interval)
        time.sleep(args.grace)
        summaries = []
        for _process, pipe in workers:
            pipe.send("stop")
        for _process, pipe in workers:
            kind, payload = pipe.recv()
            summaries.extend(payload)
        figures = analyse(summaries, windows, handed_over)
        load = (load_before, os.getloadavg()[0])
        report(args, figures, windows, connected, connect_s, spread, health_s, limit,
               len(urls), load)
        return 0
    finally:
        for process, _pipe in workers:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
        if system is not None:
            system.stop()


def report(args, figures: dict, windows: list[str], connected: int, connect_s: float,
           spread: str, health_s: list[float], limit: int, servers: int,
           load: tuple[float, float]) -> None:
    rows = []
    all_delays: list[float] = []
    delivered = duplicates = 0
    for number, window in enumerate(windows, start=1):
        entry = figures[window]
        all_delays.extend(entry["delays"])
        delivered += entry["got"]
        duplicates += entry["duplicates"]
        rows.append([number, f"{entry['got']:,}/{args.viewers:,}",
                     f"{100 * entry['got'] / args.viewers:.2f}%", *delays_ms(entry["delays"]),
                     entry["duplicates"]])
    total = args.viewers * len(windows)
    rows.append(["all", f"{delivered:,}/{total:,}", f"{100 * delivered / total:.2f}%",
                 *delays_ms(all_delays), duplicates])
    headers = ["update", "viewers that got it", "fraction", "p50 ms", "p95 ms", "p99 ms",
               "max ms", "duplicates"]
    import websockets
    health_sorted = sorted(health_s)
    notes = (f"{connected:,} of {args.viewers:,} viewers connected through POST /register in "
             f"{connect_s:.1f} s from {args.processes} process(es) ({spread}). Delay: from "
             f"the publisher handing an update to a WebSocket server's /publish (as a "
             f"subscriber does) to a viewer receiving it, viewers and servers on the same "
             f"2-core machine. A GET /health sent to each server right after each hand-over, "
             f"while it was broadcasting, was answered in p50 "
             f"{1000 * percentile(health_sorted, 0.5):.0f} ms, max "
             f"{1000 * health_sorted[-1]:.0f} ms (the event loop keeps serving during the "
             f"fan-out). Load average (1 min) {load[0]:.1f} before the run, "
             f"{load[1]:.1f} at the end, other work included. websockets "
             f"{websockets.__version__}; open-file limit {limit}.")
    title = (f"Viewers: {args.viewers:,} concurrent viewers on {servers} WebSocket "
             f"server(s), {len(windows)} updates")
    harness.report(title, headers, rows, notes=notes, write=not args.no_report)
    print()
    print(notes)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/viewers_load.py",
        description="Open N concurrent viewers through the registration API, publish window "
                    "updates as a subscriber would, and report per update the fraction of "
                    "viewers reached and the hand-over-to-receipt delay (p50/p95/p99/max).")
    parser.add_argument("--viewers", type=positive_int, default=10_000,
                        help="concurrent viewer connections (default 10000)")
    parser.add_argument("--processes", type=positive_int, default=4,
                        help="viewer processes, asyncio clients each (default 4)")
    parser.add_argument("--updates", type=positive_int, default=20,
                        help="window updates to publish (default 20)")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between updates (default 2, the window length)")
    parser.add_argument("--clusters", type=positive_int, default=3,
                        help="WebSocket servers of the system it starts (default 3; 1 puts "
                             "every viewer on one server)")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds to wait for the last update after sending it (default 5)")
    parser.add_argument("--registration-url", default=None,
                        help="measure a running system at this registration API instead of "
                             "starting one")
    parser.add_argument("--log-dir", default=None,
                        help="keep the started system's logs in this folder (default: a "
                             "temporary one, deleted)")
    parser.add_argument("--log-level", default="WARNING",
                        help="LOG_LEVEL of the started system (default WARNING; DEBUG logs "
                             "each broadcast's duration)")
    parser.add_argument("--no-report", action="store_true",
                        help="print the figures without appending them to docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.processes > args.viewers:
        parser.error("--processes must not exceed --viewers")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (RuntimeError, OSError, requests.RequestException) as err:
        print(f"viewers_load: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
