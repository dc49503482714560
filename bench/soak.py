"""Soak: the whole system under a steady load for a long time, viewers joining and leaving.

Starts a system of its own (scripts/start_all.sh on free ports and a temporary VAR_DIR), posts
events at a steady rate to POST /emojis, keeps one viewer per cluster connected throughout and a
crowd of others joining and leaving, and samples every component's resident memory (the process
and its children: granian's workers, Spark's JVM). At the end it checks that nothing was lost:
every event answered 200 is in emoji-events exactly once, and the persistent viewers' last update
of every window has exactly the counts of the events in Kafka for it. Reports RSS at start, end
and peak per component, and writes the run's file under bench/results/.

    .venv/bin/python -m bench.soak --minutes 10 --rate 200 --viewers 30
"""

from __future__ import annotations

import argparse
import logging
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import requests
from kafka import TopicPartition

from bench import harness
from bench.harness import REPO_ROOT, RssSampler, system_pids
from emojistream import config
from emojistream.common import kafka_clients
from emojistream.common.events import format_timestamp, parse_timestamp, window_bounds
from testkit.sandbox import isolated_env
from testkit.topics import events_of
from testkit.viewer import RecordingViewer

log = logging.getLogger("soak")

EMOJIS = ("🔥", "😂", "👏", "🎉", "😮")
PREFIX = "soak"
SETTLE_TIMEOUT_S = 180


# --- the system and its memory ------------------------------------------------------------------

def script(name: str, env: dict, timeout_s: float) -> None:
    done = subprocess.run([str(REPO_ROOT / "scripts" / name)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stdout}{done.stderr}")


def rss_mib(sampler: RssSampler) -> dict[str, float]:
    """Resident memory of each component with its children now, in MiB (see RssSampler)."""
    return {name: kb / 1024 for name, (kb, _count) in sampler.sample().items()}


class MemorySampler:
    """Samples every component's RSS every ``interval_s`` in a thread."""

    def __init__(self, settings: config.Settings, interval_s: float):
        self.processes = RssSampler(system_pids(settings))
        self.interval_s = interval_s
        self.first = rss_mib(self.processes)
        self.peak = dict(self.first)
        self.last = dict(self.first)
        self.half: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        self.last = rss_mib(self.processes)
        self.peak = {name: max(self.peak.get(name, 0), self.last.get(name, 0))
                     for name in self.peak.keys() | self.last.keys()}

    def mark_half_time(self) -> None:
        self.sample()
        self.half = dict(self.last)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# --- load and viewers ---------------------------------------------------------------------------

class Load:
    """Posts ``rate`` events/s in batches every 100 ms; unique user ids."""

    def __init__(self, settings: config.Settings, rate: int):
        self.url = f"http://{settings.api_host}:{settings.api_port}/emojis"
        self.batch = max(1, rate // 10)
        self.accepted = 0
        self.failed = 0
        self._next = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with requests.Session() as session:
            tick = time.monotonic()
            while not self._stop.is_set():
                self._post(session)
                tick += 0.1
                self._stop.wait(max(0.0, tick - time.monotonic()))

    def _post(self, session: requests.Session) -> None:
        now = format_timestamp(datetime.now(UTC))
        events = [{"user_id": f"{PREFIX}-{self._next + i}", "emoji_type": random.choice(EMOJIS),
                   "timestamp": now} for i in range(self.batch)]
        self._next += self.batch
        try:
            answer = session.post(self.url, json=events, timeout=10)
            ok = answer.status_code == 200 and answer.json().get("accepted") == len(events)
        except (requests.RequestException, ValueError):
            ok = False
        if ok:
            self.accepted += len(events)
        else:
            self.failed += len(events)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Crowd:
    """Viewers joining and leaving: every ``interval_s`` one joins and, once there are
    ``size``, a random one leaves."""

    def __init__(self, registration_url: str, size: int, interval_s: float = 1.0):
        self.url, self.size, self.interval_s = registration_url, size, interval_s
        self.viewers: list[RecordingViewer] = []
        self.joined = self.left = 0
        self.updates_received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.viewers.append(RecordingViewer(self.url, f"crowd-{self.joined}"))
            self.joined += 1
            if len(self.viewers) > self.size:
                self._leave(self.viewers.pop(random.randrange(len(self.viewers))))

    def _leave(self, viewer: RecordingViewer) -> None:
        viewer.close()
        self.updates_received += len(viewer.messages)
        self.left += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for viewer in self.viewers:
            self._leave(viewer)


# --- the truth ----------------------------------------------------------------------------------

def truth(settings: config.Settings) -> tuple[int, dict[str, dict]]:
    """(events of the soak in emoji-events, their count per emoji per window)."""
    consumer = kafka_clients.consumer(settings, enable_auto_commit=False)
    topic = settings.emoji_events_topic
    windows: dict[str, Counter] = defaultdict(Counter)
    users: Counter = Counter()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            for batch in consumer.poll(timeout_ms=1000, max_records=50_000).values():
                for event in (e for record in batch for e in events_of(record.value)):
                    start, _ = window_bounds(parse_timestamp(event["timestamp"]),
                                             settings.window_seconds)
                    windows[format_timestamp(start)][event["emoji_type"]] += 1
                    users[event["user_id"]] += 1
    finally:
        consumer.close()
    duplicates = sum(1 for n in users.values() if n > 1)
    if duplicates:
        log.error("%d event(s) are in emoji-events more than once", duplicates)
    return sum(users.values()), {w: dict(c) for w, c in windows.items()}


def mismatches(viewers: list[RecordingViewer], expected: dict[str, dict]) -> int:
    """(viewer, window) pairs whose last update is not exactly the expected counts."""
    return sum(1 for viewer in viewers for window, counts in expected.items()
               if viewer.last_counts().get(window) != counts)


def settle(viewers: list[RecordingViewer], expected: dict[str, dict]) -> int:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while (wrong := mismatches(viewers, expected)) and time.monotonic() < deadline:
        time.sleep(1)
    return wrong


# --- the run ------------------------------------------------------------------------------------

def soak(args: argparse.Namespace, env: dict) -> tuple[dict, str]:
    settings = config.load(env)
    registration = f"http://{settings.registration_host}:{settings.registration_port}"
    watchers = [RecordingViewer(registration, f"watcher-{n}") for n in settings.clusters]
    memory = MemorySampler(settings, args.sample_interval)
    load = Load(settings, args.rate)
    crowd = Crowd(registration, args.viewers)
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(min(30.0, args.minutes * 30))
            if not memory.half and time.monotonic() - started >= args.minutes * 30:
                memory.mark_half_time()
            log.info("%.0f s: %d events accepted, %d failed; crowd %d joined, %d left",
                     time.monotonic() - started, load.accepted, load.failed, crowd.joined,
                     crowd.left)
    finally:
        load.stop()
        crowd.stop()
    elapsed = time.monotonic() - started
    in_kafka, expected = truth(settings)
    wrong = settle(watchers, expected)
    memory.stop()
    for viewer in watchers:
        viewer.close()
    components = [{"component": name, "start_mib": memory.first.get(name, 0),
                   "half_time_mib": memory.half.get(name, 0), "end_mib": memory.last.get(name, 0),
                   "peak_mib": memory.peak[name],
                   "second_half_growth_mib": memory.last.get(name, 0) - memory.half.get(name, 0)}
                  for name in sorted(memory.peak)]
    exact = load.failed == 0 and in_kafka == load.accepted and wrong == 0
    results = {"minutes": elapsed / 60, "rate_per_s": args.rate, "accepted": load.accepted,
               "refused": load.failed, "in_kafka": in_kafka, "windows": len(expected),
               "persistent_viewers": len(watchers), "pairs_not_exact": wrong,
               "crowd_joined": crowd.joined, "crowd_left": crowd.left,
               "crowd_at_most": args.viewers, "crowd_updates_received": crowd.updates_received,
               "nothing_lost": exact, "memory": components}
    notes = (f"{elapsed / 60:.1f} minutes at {args.rate} events/s: {load.accepted:,} events "
             f"answered 200, {load.failed:,} refused, {in_kafka:,} in emoji-events; "
             f"{len(expected)} windows, {len(watchers)} persistent viewers (one per cluster) "
             f"with {wrong} (viewer, window) pairs not exact; {crowd.joined} other viewers "
             f"joined and {crowd.left} left (at most {args.viewers} at a time; they received "
             f"{crowd.updates_received:,} updates). RSS in MiB of each component with its "
             f"children (granian's workers; Spark's driver JVM is a row of its own), sampled "
             f"every {args.sample_interval:.0f} s from the start of the load; the last column is "
             f"the growth from half-time to the end, once warmed up. "
             f"Nothing lost: {'yes' if exact else 'NO'}.")
    return results, notes


HEADERS = ["component", "RSS start MiB", "half-time MiB", "end MiB", "peak MiB",
           "second half MiB"]


def rows(components: list[dict]) -> list[list]:
    return [[c["component"], f"{c['start_mib']:.0f}", f"{c['half_time_mib']:.0f}",
             f"{c['end_mib']:.0f}", f"{c['peak_mib']:.0f}", f"{c['second_half_growth_mib']:+.0f}"]
            for c in components]


def parse_args(argv) -> argparse.Namespace:
    parser = harness.parser("soak", __doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    parser.add_argument("--rate", type=int, default=200, help="events/s (default 200)")
    parser.add_argument("--viewers", type=int, default=30,
                        help="viewers joining and leaving, at most this many at a time")
    parser.add_argument("--sample-interval", type=float, default=10.0,
                        help="seconds between memory samples (default 10)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: "
                                                   "%(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    args = parse_args(argv)
    run = harness.Run("soak", args)
    with tempfile.TemporaryDirectory(prefix="soak-") as var_dir:
        env = isolated_env(Path(var_dir))
        try:
            script("start_all.sh", env, timeout_s=400)
            results, notes = soak(args, env)
        finally:
            script("stop_all.sh", env, timeout_s=300)
    title = (f"Soak: {args.minutes:g} minutes at {args.rate} events/s, viewers joining and "
             "leaving")
    harness.print_table(title, HEADERS, rows(results["memory"]))
    print(notes)
    run.save(title, results, notes)
    return 0 if results["nothing_lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
