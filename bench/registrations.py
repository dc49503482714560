"""Registrations per second against the number of registration processes: POST /register as
fast as the registration API answers, with 1, 2 and 4 granian worker processes
(REGISTRATION_WORKERS) on one port, on this machine.

    .venv/bin/python -m bench.registrations --workers 1,2,4 --count 20000
    .venv/bin/python -m bench.registrations --workers 2 --count 5000 --trials 1   (a quick look)

It starts what it measures itself, on loopback only: --clusters WebSocket servers (registration
needs healthy clusters to assign) and, for each worker count in turn, a registration API with
that many workers, on free ports in a temporary VAR_DIR with fresh secrets, stopped by pid at the
end. Log level WARNING, as a busy deployment would run.

The load generator must not be the bottleneck, and it shares the machine's cores with the API.
So it is lean: --processes processes of asyncio clients, each keeping its share of --connections
keep-alive HTTP/1.1 connections busy with one request at a time (pre-encoded requests, responses
read by their Content-Length, no HTTP library), each connection bound to one of --addresses
local source addresses (127.0.0.2, 127.0.0.3, ...: the per-address limits stay at their
defaults; each address gets far less than REGISTRATION_BURST_PER_ADDRESS). Each registration is
a new client id (a new session). It measures, over the --count registrations of each step
(after a --warmup not counted): registrations answered 200 per second, the latency percentiles
seen by the clients, any other status, and the CPU time of the registration API's processes
and of the generator, as shares of the machine (cores x wall time): the generator's share says
how much of the machine it took from the API.

Steps run one after the other in one run; --trials repeats them, the order reversed every other
time. The run's file goes under bench/results/ (docs/benchmarks.md: python -m bench.report);
--plot docs/registrations.png draws registrations/s per worker count (median and range).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets as random_tokens
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import harness, plots
from emojistream import config, topology
from testkit.processes import Service, ServiceFailed, get_json, stop_all, wait_for_health
from testkit.sandbox import free_port, isolated_env

STARTUP_TIMEOUT_S = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the load generator ------------------------------------------------------------------------

class _Job:
    """The registrations one generator process sends: indexes start..stop, taken in turn by its
    connections; their statuses and latencies."""

    def __init__(self, start: int, stop: int, tag: str):
        self.next = start
        self.stop = stop
        self.tag = tag.encode()
        self.statuses: dict[int, int] = {}
        self.latencies: list[float] = []
        self.bad_bodies = 0

    def take(self) -> int | None:
        if self.next >= self.stop:
            return None
        index, self.next = self.next, self.next + 1
        return index


class _Client(asyncio.Protocol):
    """One keep-alive connection sending POST /register, one at a time, until the job is done."""

    def __init__(self, job: _Job, head: bytes, done: asyncio.Future):
        self.job = job
        self.head = head
        self.done = done
        self.buffer = b""
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.checked = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._send_next()

    def _send_next(self) -> None:
        assert self.transport is not None
        index = self.job.take()
        if index is None:
            self.transport.close()
            return
        body = b'{"client_id":"%s-%d"}' % (self.job.tag, index)
        self.sent_at = time.perf_counter()
        self.transport.write(self.head % len(body) + body)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            line_end = head.find(b"\r\n", at)
            length = int(head[at + 15:line_end if line_end >= 0 else None]) if at >= 0 else 0
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            status = int(head[9:12])
            job = self.job
            job.latencies.append(time.perf_counter() - self.sent_at)
            job.statuses[status] = job.statuses.get(status, 0) + 1
            if not self.checked and status == 200:  # one answer of each connection, read
                self.checked = True
                if b'"subscriber_endpoint"' not in self.buffer[end + 4:total]:
                    job.bad_bodies += 1
            self.buffer = self.buffer[total:]
            self._send_next()

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(exc)


async def _generate(host: str, port: int, job: _Job, connections: int,
                    sources: list[str]) -> list:
    loop = asyncio.get_running_loop()
    head = (f"POST /register HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n").encode()
    waits = []
    for n in range(connections):
        done = loop.create_future()
        await loop.create_connection(lambda d=done: _Client(job, head, d), host, port,
                                     local_addr=(sources[n % len(sources)], 0))
        waits.append(done)
    return await asyncio.gather(*waits)


def _generator(host: str, port: int, start: int, stop: int, tag: str, connections: int,
               sources: list[str], pipe) -> None:
    """A generator process: waits for "go", sends its registrations, reports."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    job = _Job(start, stop, tag)
    pipe.send("ready")
    pipe.recv()  # "go"
    cpu_before, wall_before = _own_cpu_s(), time.monotonic()
    errors = asyncio.run(_generate(host, port, job, connections, sources))
    pipe.send({"statuses": job.statuses, "latencies": job.latencies,
               "bad_bodies": job.bad_bodies, "cpu_s": _own_cpu_s() - cpu_before,
               "wall_s": time.monotonic() - wall_before,
               "errors": sorted({repr(e) for e in errors if e is not None})[:3]})


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def generate(host: str, port: int, count: int, tag: str, processes: int, connections: int,
             sources: list[str], timeout_s: float, server_pids) -> dict:
    """``count`` registrations spread over ``processes`` generator processes; what they saw,
    and the CPU time of the generator and of the server's processes (``server_pids()``)."""
    context = multiprocessing.get_context("fork")
    workers = []
    share = -(-count // processes)
    for p in range(processes):
        parent, child = context.Pipe()
        start, stop = p * share, min(count, (p + 1) * share)
        own_sources = sources[p::processes] or sources
        process = context.Process(target=_generator, daemon=True, args=(
            host, port, start, stop, tag, max(1, connections // processes), own_sources, child))
        process.start()
        workers.append((process, parent))
    try:
        for _, pipe in workers:
            if not pipe.poll(30):
                raise RuntimeError("a generator process did not start")
            pipe.recv()
        server_before = _tree_cpu_s(server_pids())
        started = time.monotonic()
        for _, pipe in workers:
            pipe.send("go")
        reports = []
        for _, pipe in workers:
            left = timeout_s - (time.monotonic() - started)
            if left <= 0 or not pipe.poll(left):
                raise RuntimeError(f"the generators did not finish within {timeout_s:g} s")
            reports.append(pipe.recv())
        wall_s = time.monotonic() - started
        server_cpu_s = _tree_cpu_s(server_pids()) - server_before
    finally:
        for process, _ in workers:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
    statuses: dict[int, int] = {}
    for report in reports:
        for status, number in report["statuses"].items():
            statuses[status] = statuses.get(status, 0) + number
    latencies = sorted(x for report in reports for x in report["latencies"])
    cores = os.cpu_count() or 1
    generator_cpu_s = sum(report["cpu_s"] for report in reports)
    return {
        "registrations": count,
        "answered_200": statuses.get(200, 0),
        "other_statuses": {str(k): v for k, v in sorted(statuses.items()) if k != 200},
        "bad_bodies": sum(report["bad_bodies"] for report in reports),
        "connection_errors": sorted({e for report in reports for e in report["errors"]}),
        "wall_s": round(wall_s, 3),
        "per_s": round(statuses.get(200, 0) / wall_s, 1),
        "p50_ms": _ms(latencies, 0.50), "p99_ms": _ms(latencies, 0.99),
        "max_ms": _ms(latencies, 1.0),
        "server_cpu_s": round(server_cpu_s, 2),
        "server_cpu_share": round(server_cpu_s / (cores * wall_s), 3),
        "server_cpu_us_per_registration": round(server_cpu_s / max(1, count) * 1e6, 1),
        "generator_cpu_s": round(generator_cpu_s, 2),
        "generator_cpu_share": round(generator_cpu_s / (cores * wall_s), 3),
        "generator_cpu_us_per_registration": round(generator_cpu_s / max(1, count) * 1e6, 1),
    }


def _ms(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return round(sorted_values[index] * 1000, 2)


# --- CPU time of a process tree ------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by ``root`` and its descendants (those alive)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                stats[int(entry)] = found
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(stats[pid][1] for pid in tree if pid in stats)


# --- the system under test ---------------------------------------------------------------------

class System:
    """The WebSocket servers, and one registration API at a time, on free ports in a temporary
    VAR_DIR, each stopped by its pid."""

    def __init__(self, clusters: int, threads: int | None):
        self._dir = tempfile.TemporaryDirectory(prefix="registrations-")
        self.var_dir = Path(self._dir.name)
        self.env = isolated_env(self.var_dir, cluster_count=clusters)
        self.env.update(SUBSCRIBER_KEY=random_tokens.token_urlsafe(32),
                        TOKEN_SECRET=random_tokens.token_urlsafe(32), LOG_LEVEL="WARNING")
        if threads is not None:
            self.env["REGISTRATION_THREADS"] = str(threads)
        self.settings = config.load(self.env)
        self.log_dir = self.var_dir / "logs"
        self.log_dir.mkdir()
        self.servers: list[Service] = []
        self.registration: Service | None = None

    def start_servers(self) -> None:
        for n in self.settings.clusters:
            self.servers.append(Service(self.log_dir, f"ws_server_{n}", "ws_server.py",
                                        "--cluster", str(n), env=self.env))
        for n in self.settings.clusters:
            wait_for_health(topology.ws_health_url(self.settings, n), *self.servers,
                            timeout_s=STARTUP_TIMEOUT_S)

    def start_registration(self, workers: int) -> tuple[str, int]:
        port = free_port()
        env = dict(self.env, REGISTRATION_PORT=str(port), REGISTRATION_WORKERS=str(workers))
        self.registration = Service(self.log_dir, f"registration_api_{workers}_{port}",
                                    "registration_api.py", env=env)
        url = f"http://{self.settings.registration_host}:{port}"
        wait_for_health(f"{url}/health", self.registration, timeout_s=STARTUP_TIMEOUT_S)
        # Every worker polls the servers itself: wait until all of them answer as healthy.
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        healthy = 0
        while healthy < 4 * workers:
            status, body = get_json(f"{url}/health")
            healthy = healthy + 1 if status == 200 and body.get("healthy_clusters") == len(
                self.settings.clusters) else 0
            if time.monotonic() > deadline or not self.registration.running():
                raise ServiceFailed(f"the registration API did not see every cluster; see "
                                    f"{self.log_dir}")
            time.sleep(0.05)
        host = socket.gethostbyname(self.settings.registration_host)
        return host, port

    def registration_pid(self) -> int:
        assert self.registration is not None
        return self.registration.pid

    def stop_registration(self) -> None:
        if self.registration is not None:
            stop_all([self.registration])
            self.registration = None

    def stop(self) -> None:
        self.stop_registration()
        stop_all(self.servers)
        self._dir.cleanup()


# --- the run -----------------------------------------------------------------------------------

def sources(addresses: int) -> list[str]:
    """Local source addresses 127.0.0.2, 127.0.0.3, ... (all of 127.0.0.0/8 is loopback)."""
    return [f"127.0.0.{2 + n}" for n in range(addresses)]


def run(args: argparse.Namespace) -> int:
    record = harness.Run("registrations", args)
    system = System(args.clusters, args.threads)
    steps: list[dict] = []
    try:
        system.start_servers()
        for trial in range(args.trials):
            order = args.workers if trial % 2 == 0 else list(reversed(args.workers))
            for workers in order:
                host, port = system.start_registration(workers)
                try:
                    tag = f"t{trial}w{workers}"
                    if args.warmup:
                        generate(host, port, args.warmup, f"{tag}-warm", args.processes,
                                 args.connections, sources(args.addresses), args.timeout_s,
                                 system.registration_pid)
                    step = generate(host, port, args.count, tag, args.processes,
                                    args.connections, sources(args.addresses), args.timeout_s,
                                    system.registration_pid)
                finally:
                    system.stop_registration()
                step.update(workers=workers, trial=trial + 1)
                steps.append(step)
                print(f"trial {trial + 1}, {workers} worker(s): {step['per_s']:,.0f} "
                      f"registrations/s, p99 {step['p99_ms']} ms, generator "
                      f"{step['generator_cpu_share']:.0%} of the machine", flush=True)
    finally:
        system.stop()
    summary = summarize(steps, args.workers)
    rows = [[s["workers"], f"{s['median_per_s']:,.0f}", f"{s['min_per_s']:,.0f}–"
             f"{s['max_per_s']:,.0f}", s["p50_ms"], s["p99_ms"],
             f"{s['server_cpu_share']:.0%}", f"{s['generator_cpu_share']:.0%}",
             s["server_cpu_us_per_registration"], s["refused"]] for s in summary]
    headers = ["workers", "registrations/s (median)", "range", "p50 ms", "p99 ms",
               "API CPU", "generator CPU", "API µs CPU/registration", "not 200"]
    harness.print_table("Registrations per second against registration worker processes",
                        headers, rows)
    if args.plot:
        plots.bars(args.plot, {f"{w} worker{'s' if w > 1 else ''}": [
            s["per_s"] for s in steps if s["workers"] == w] for w in args.workers},
            title=f"Registrations/s against registration worker processes "
                  f"({os.cpu_count()} cores, generator included)",
            xlabel="registrations answered 200 per second")
    record.save("Registrations per second against registration worker processes",
                {"steps": steps, "summary": summary, "cores": os.cpu_count(),
                 "generator": {"processes": args.processes, "connections": args.connections,
                               "source_addresses": sources(args.addresses)}},
                notes="Loopback only; generator and API share the machine's cores.")
    failed = [s for s in steps if s["answered_200"] != s["registrations"] or s["bad_bodies"]]
    return 1 if failed else 0


def summarize(steps: list[dict], workers: list[int]) -> list[dict]:
    """Per worker count: the median step's figures and the range of registrations/s."""
    out = []
    for count in workers:
        mine = sorted((s for s in steps if s["workers"] == count), key=lambda s: s["per_s"])
        if not mine:
            continue
        median = mine[len(mine) // 2]  # the figures of the (upper) median step
        out.append({"workers": count,
                    "median_per_s": round(statistics.median(s["per_s"] for s in mine), 1),
                    "min_per_s": mine[0]["per_s"], "max_per_s": mine[-1]["per_s"],
                    "p50_ms": median["p50_ms"], "p99_ms": median["p99_ms"],
                    "server_cpu_share": median["server_cpu_share"],
                    "generator_cpu_share": median["generator_cpu_share"],
                    "server_cpu_us_per_registration": median["server_cpu_us_per_registration"],
                    "generator_cpu_us_per_registration":
                        median["generator_cpu_us_per_registration"],
                    "refused": sum(s["registrations"] - s["answered_200"] for s in mine)})
    return out


def worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a list like 1,2,4, got {text!r}") from None
    if not counts or min(counts) < 1 or max(counts) > 16:
        raise argparse.ArgumentTypeError(f"worker counts from 1 to 16, got {text!r}")
    return counts


def bounded(low: int, high: int):
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, got {value}")
        return value
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = harness.parser("registrations", __doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=worker_counts, default=[1, 2, 4],
                        help="registration worker counts to measure (default 1,2,4)")
    parser.add_argument("--count", type=bounded(100, 200_000), default=20_000,
                        help="registrations measured per step (default 20000)")
    parser.add_argument("--warmup", type=bounded(0, 20_000), default=1_000,
                        help="registrations sent first, not counted (default 1000)")
    parser.add_argument("--trials", type=bounded(1, 5), default=2,
                        help="times each step runs, order reversed every other time (default 2)")
    parser.add_argument("--processes", type=bounded(1, 8), default=2,
                        help="load generator processes (default 2)")
    parser.add_argument("--connections", type=bounded(1, 512), default=64,
                        help="keep-alive connections in all (default 64)")
    parser.add_argument("--addresses", type=bounded(1, 200), default=8,
                        help="local source addresses, 127.0.0.2 on (default 8)")
    parser.add_argument("--clusters", type=bounded(1, 8), default=3,
                        help="WebSocket servers to assign to (default 3)")
    parser.add_argument("--threads", type=bounded(1, 64), default=None,
                        help="REGISTRATION_THREADS (default: the setting's default)")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="write a bar chart of registrations/s per worker count there")
    parser.add_argument("--timeout-s", type=float, default=300.0,
                        help="longest a step may take (default 300)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
