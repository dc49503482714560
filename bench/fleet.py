"""Viewers on the real pipeline: what tens of thousands of viewers see while reactions flow, from
a window's end to the last update of that window each viewer receives, with the real message
rate (running and final updates), side by side for several server configurations in one run.

    .venv/bin/python -m bench.fleet [--viewers 20000,50000] [--rate 2000] [--seconds 20]
        [--variants 'before:WS_CONFLATE=false;after:'] [--addresses 127.0.0.2+16]
        [--per-process 12500] [--results-dir bench/results]

Per variant (NAME:SETTING=VALUE,SETTING=VALUE; an empty list is the defaults) the whole system
runs as scripts/start_all.sh starts it, on free ports with a temporary VAR_DIR and the variant's
settings in its environment, and is stopped by scripts/stop_all.sh at the end. After an
unmeasured warm-up (--warmup-seconds of reactions: Spark's first micro-batches compile code),
for each --viewers count:

- the viewer fleet (bench/viewers, compiled Go, built by scripts/setup.sh into
  lib/bench-viewers) registers and connects that many viewers to the stream main, in processes
  of --per-process viewers each (a process may hold fewer than 20,000 open files), from the
  local source addresses --addresses (127.0.0.2+16: 127.0.0.2 to 127.0.0.17) so that no
  per-address limit is raised;
- a load process of its own POSTs --rate reactions a second for --seconds (bench/end_to_end.py's
  load), starting at a window boundary; then --drain-seconds pass for the last updates;
- every viewer's last update of every window the load touched is compared with the events the
  API accepted for that window: "final" when it counts all of them. Latency: the window's end
  (its window_end) to that update's arrival, over viewers (p50/p95/p99 of every window's
  viewers pooled, and the worst window's p99). Delivered: the fraction of (viewer, window) pairs
  whose last update is final. Messages/s: updates the viewers received during the load's
  windows, per second. CPU: the fleet's and each WebSocket server's CPU seconds during the load
  (from /proc), and every component's and the whole machine's, as a share of the load's
  wall time (1.0 = one core).

The viewers of one count disconnect before the next count connects. A join storm (STORM=N in
a variant's settings): 2 s into the load, N more viewers register and connect as fast as they
can (--concurrency per process) while the others watch; its rate is registrations completed
per second of the storm (each followed by its connection), the watchers' latency as above.
Everything is on this machine: the fleet's CPU share is part of the result (it must not be the
bottleneck).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import signal
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench import harness
from bench.end_to_end import LoadPlan, generate, per_window, quiet_worker
from bench.harness import SystemFailed, system_pids, whole_system
from emojistream import topology
from emojistream.common.events import parse_timestamp

log = logging.getLogger("fleet")

FLEET = harness.REPO_ROOT / "lib" / "bench-viewers"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """Component -> CPU seconds of its process tree."""
    table = harness._proc_table()
    return {name: sum(cpu_seconds(p) for p in harness._tree(pid, table))
            for name, pid in pids.items()}


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / CLK_TCK, sum(fields) / CLK_TCK


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest rank of sorted values."""
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(fraction * len(values)) - 1))]


class Fleet:
    """The fleet's processes for one viewer count."""

    def __init__(self, args, registration_url: str, viewers: int, prefix: str,
                 compression: bool):
        self.processes: list[subprocess.Popen] = []
        count = max(1, math.ceil(viewers / args.per_process))
        for n in range(count):
            first = n * viewers // count
            last = (n + 1) * viewers // count
            command = [str(FLEET), "-registration", registration_url, "-prefix", prefix,
                       "-first", str(first), "-count", str(last - first),
                       "-addresses", args.addresses, "-concurrency", str(args.concurrency),
                       "-max-seconds", str(args.max_fleet_seconds)]
            if compression:
                command.append("-compression")
            self.processes.append(subprocess.Popen(command, stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, text=True))

    def connected(self) -> list[dict]:
        """Each process's "connected" line (they connect in parallel)."""
        return [self._line(p) for p in self.processes]

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.processes)

    def stop(self) -> list[dict]:
        """Tell every process to stop; their results."""
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write("stop\n")
            process.stdin.flush()
        results = [self._line(p) for p in self.processes]
        for process in self.processes:
            process.wait(timeout=60)
        return results

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    @staticmethod
    def _line(process: subprocess.Popen) -> dict:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise SystemFailed(f"the viewer fleet (pid {process.pid}) ended early")
        return json.loads(line)


def analyse(results: list[dict], expected: dict[int, int], window_ms: int) -> dict:
    """Latency to the final update and the delivered fraction over the windows of ``expected``
    (window index -> events accepted)."""
    connected = sum(r["connected"] for r in results)
    latencies: list[float] = []
    worst_p99 = 0.0
    finals = 0
    updates = 0
    per_window = []
    for window, total in sorted(expected.items()):
        window_latencies: list[float] = []
        for result in results:
            for start, histogram in result["windows"].items():
                if parse_timestamp(start).timestamp() * 1000 // window_ms != window:
                    continue
                updates += result["updates_per_window"].get(start, 0)
                for key, viewers in histogram.items():
                    got, ms = (int(x) for x in key.split())
                    if got == total:
                        window_latencies += [float(ms)] * viewers
        window_latencies.sort()
        finals += len(window_latencies)
        latencies += window_latencies
        p99 = percentile(window_latencies, 0.99)
        worst_p99 = max(worst_p99, p99 or 0.0)
        per_window.append({"window": window, "events": total, "final": len(window_latencies),
                           "p50_ms": percentile(window_latencies, 0.5), "p99_ms": p99})
    latencies.sort()
    pairs = connected * len(expected)
    return {"viewers_connected": connected, "windows": len(expected),
            "delivered_fraction": finals / pairs if pairs else None,
            "latency_ms": {name: percentile(latencies, q) for name, q in
                           (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
            "worst_window_p99_ms": worst_p99 if latencies else None,
            "updates_received": updates, "per_window": per_window}


def measure_count(args, settings, loader, viewers: int, variant: str,
                  compression: bool, storm: int = 0) -> dict:
    registration = topology.registration_url(settings)
    window_ms = settings.window_seconds * 1000
    pids = system_pids(settings)()
    servers = {name: pid for name, pid in pids.items() if name.startswith("ws_server")}
    log.info("%s: connecting %s viewers", variant, f"{viewers:,}")
    fleet = Fleet(args, registration, viewers, f"fleet-{variant}-{viewers}-", compression)
    try:
        joined = fleet.connected()
        log.info("%s: %s connected in %.1f s", variant,
                 f"{sum(j['connected'] for j in joined):,}",
                 max(j["join_seconds"] for j in joined))
        time.sleep(2)
        plan = LoadPlan(f"http://{settings.api_host}:{settings.api_port}/emojis", args.rate,
                        args.seconds,
                        (math.floor(time.time() / settings.window_seconds) + 1)
                        * settings.window_seconds, args.requests_per_second, args.connections,
                        tuple(settings.allowed_emojis))
        fleet_cpu, component_cpu = fleet.cpu(), tree_cpu_seconds(pids)
        busy = machine_busy_seconds()
        started = time.time()
        pending = loader.submit(generate, plan)
        storm_figures = join_storm(args, registration, storm, variant, plan,
                                   compression) if storm else {}
        load = pending.result()
        elapsed = time.time() - started
        fleet_cpu = fleet.cpu() - fleet_cpu
        component_cpu = {n: c - component_cpu.get(n, 0.0)
                         for n, c in tree_cpu_seconds(pids).items()}
        busy_after = machine_busy_seconds()
        machine_share = (busy_after[0] - busy[0]) / elapsed
        server_cpu = {n: component_cpu[n] for n in servers}
        time.sleep(args.drain_seconds)
        results = fleet.stop()
    finally:
        fleet.kill()
    expected = {w: sum(n for _, n in batches)
                for w, batches in per_window(load.sent, window_ms).items()}
    figures = analyse(results, expected, window_ms)
    figures.update(storm_figures)
    figures.update({
        "variant": variant, "viewers": viewers, "rate": args.rate,
        "events_accepted": sum(expected.values()), "events_refused": load.refused,
        "join_seconds": max(j["join_seconds"] for j in joined),
        "join_failures": sum(j["failed_registrations"] + j["failed_connections"]
                             for j in joined),
        "retries": sum(j["retries_429"] + j["retries_503"] for j in joined),
        "closed_early": sum(r["closed_early"] for r in results),
        "messages_per_s": figures["updates_received"] / (len(expected) * window_ms / 1000)
        if expected else None,
        "load_seconds": elapsed, "fleet_processes": len(results),
        "fleet_cpu_share": fleet_cpu / elapsed,
        "fleet_cpu_seconds_total": sum(r["cpu_seconds"] for r in results),
        "server_cpu_share": {n: c / elapsed for n, c in server_cpu.items()},
        "component_cpu_share": {n: c / elapsed for n, c in sorted(component_cpu.items())},
        "machine_cpu_share": machine_share, "machine_cores": os.cpu_count(),
        "errors": {k: v for r in results + joined for k, v in r["errors"].items()},
    })
    log.info("%s, %s viewers: final p50 %s p99 %s ms, delivered %.4f, %.0f messages/s, fleet "
             "CPU %.2f, servers %s", variant, f"{viewers:,}", figures["latency_ms"]["p50"],
             figures["latency_ms"]["p99"], figures["delivered_fraction"] or 0,
             figures["messages_per_s"] or 0, figures["fleet_cpu_share"],
             {n: round(c, 2) for n, c in figures["server_cpu_share"].items()})
    return figures


def join_storm(args, registration: str, storm: int, variant: str, plan: LoadPlan,
               compression: bool) -> dict:
    """``storm`` more viewers registering and connecting as fast as they can, 2 s into the
    load, while the others watch; they leave once all have joined."""
    time.sleep(max(0.0, plan.start - time.time()) + 2)
    log.info("%s: join storm of %s viewers", variant, f"{storm:,}")
    fleet = Fleet(args, registration, storm, f"storm-{variant}-{storm}-", compression)
    try:
        joined = fleet.connected()
        cpu = fleet.cpu()
        fleet.stop()
    finally:
        fleet.kill()
    seconds = max(j["join_seconds"] for j in joined)
    registered = sum(j["registered"] for j in joined)
    figures = {"storm_viewers": storm, "storm_registered": registered,
               "storm_connected": sum(j["connected"] for j in joined),
               "storm_join_seconds": seconds,
               "storm_joins_per_s": registered / seconds if seconds else None,
               "storm_failures": sum(j["failed_registrations"] + j["failed_connections"]
                                     for j in joined),
               "storm_retries": sum(j["retries_429"] + j["retries_503"] for j in joined),
               "storm_fleet_cpu_seconds": cpu}
    log.info("%s: storm: %s registered and connected in %.1f s (%.0f a second), %d failed, "
             "%d retries", variant, f"{figures['storm_connected']:,}", seconds,
             figures["storm_joins_per_s"] or 0, figures["storm_failures"],
             figures["storm_retries"])
    return figures


def run_variant(args, variant: str, overrides: dict[str, str]) -> list[dict]:
    """The variant's viewer counts (VIEWERS=N+N in its settings, else --viewers) on a system
    started with its settings and CLUSTERS=N WebSocket servers (default 3), with a join storm
    of STORM=N more viewers during each load; the fleet offers compression when
    WS_COMPRESSION is set."""
    overrides = dict(overrides)
    counts = ([int(n) for n in overrides.pop("VIEWERS").split("+")] if "VIEWERS" in overrides
              else args.viewer_counts)
    clusters = int(overrides.pop("CLUSTERS", "3"))
    storm = int(overrides.pop("STORM", "0"))
    compression = overrides.get("WS_COMPRESSION", "none") != "none"
    context = multiprocessing.get_context("spawn")
    with harness.overridden_environment(overrides):
        with whole_system(clusters=clusters) as (_env, settings), \
                ProcessPoolExecutor(1, mp_context=context, initializer=quiet_worker) as loader:
            log.info("%s (%s): system up", variant, overrides or "defaults")
            if args.warmup_seconds > 0:
                plan = LoadPlan(f"http://{settings.api_host}:{settings.api_port}/emojis",
                                args.rate, args.warmup_seconds, time.time() + 0.5,
                                args.requests_per_second, args.connections,
                                tuple(settings.allowed_emojis))
                loader.submit(generate, plan).result()
                time.sleep(args.drain_seconds)
            return [measure_count(args, settings, loader, viewers, variant, compression, storm)
                    for viewers in counts]


HEADERS = ["variant", "viewers", "final p50 ms", "final p95 ms", "final p99 ms",
           "worst window p99 ms", "delivered", "messages/s", "fleet CPU", "servers' CPU",
           "join s"]


def row(run: dict) -> list:
    def ms(value):
        return "-" if value is None else f"{value:,.0f}"
    lat = run["latency_ms"]
    return [run["variant"], f"{run['viewers']:,}", ms(lat["p50"]), ms(lat["p95"]),
            ms(lat["p99"]), ms(run["worst_window_p99_ms"]),
            "-" if run["delivered_fraction"] is None else f"{run['delivered_fraction']:.4f}",
            f"{run['messages_per_s'] or 0:,.0f}", f"{run['fleet_cpu_share']:.2f}",
            f"{sum(run['server_cpu_share'].values()):.2f}", f"{run['join_seconds']:.1f}"]


def parse_args(argv=None):
    parser = harness.parser("fleet", __doc__)
    parser.add_argument("--viewers", default="20000,50000", help="viewer counts, in order")
    parser.add_argument("--rate", type=int, default=2000, help="reactions a second")
    parser.add_argument("--seconds", type=float, default=20, help="length of the load")
    parser.add_argument("--drain-seconds", type=float, default=8,
                        help="after the load, before the viewers stop listening")
    parser.add_argument("--warmup-seconds", type=float, default=10)
    parser.add_argument("--variants", default="defaults:",
                        help="NAME:SETTING=VALUE,...;NAME:... (default: defaults:, the "
                             "defaults); VIEWERS=N+N in a variant's settings replaces --viewers")
    parser.add_argument("--addresses", default="127.0.0.2+16",
                        help="the fleet's local source addresses (FIRST+N or a list)")
    parser.add_argument("--per-process", type=int, default=12_500,
                        help="viewers per fleet process (each may hold < 20,000 open files)")
    parser.add_argument("--concurrency", type=int, default=256,
                        help="registrations and handshakes under way at once per process")
    parser.add_argument("--max-fleet-seconds", type=float, default=600,
                        help="a fleet process stops on its own after this long")
    parser.add_argument("--requests-per-second", type=int, default=100)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args(argv)
    args.viewer_counts = [int(v) for v in args.viewers.split(",")]
    args.variant_list = harness.variants(args.variants)
    if not FLEET.exists():
        parser.error(f"{FLEET} is missing: run scripts/setup.sh (it needs Go)")
    return args


def interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, interrupt)
    record = harness.Run("fleet", args)
    runs = []
    try:
        for name, overrides in args.variant_list:
            runs += run_variant(args, name, overrides)
    except SystemFailed as err:
        log.error("%s", err)
        return 1
    title = "Viewers on the real pipeline: window end to the final update"
    harness.print_table(title, HEADERS, [row(r) for r in runs])
    notes = (f"{args.rate:,} reactions/s for {args.seconds:g} s per viewer count, one stream; "
             f"the fleet (bench/viewers, Go) on the same machine, {args.per_process:,} viewers "
             f"per process, from {args.addresses}. Latency: a window's end to the arrival of "
             "the viewer's last update of it, counted when that update has every accepted event "
             "(p50/p95/p99 over all viewers and windows). CPU: cores busy during the load. "
             f"Variants: {args.variants}.")
    print(notes)
    record.save(title, {"runs": runs, "variants": dict(args.variant_list)}, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
