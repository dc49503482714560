"""Fault tests: the whole system (scripts/start_all.sh, on its own Kafka, ports and VAR_DIR) is
broken on purpose while events flow, and must deliver exact counts afterwards.

- the aggregator (and its Spark JVM), a WebSocket server, the main publisher and a cluster
  publisher are SIGKILLed mid-stream: the supervisor brings each back within 30 s;
- the ingest API is stopped with SIGTERM under load;
- Spark's UI refuses to kill the aggregator's jobs, and listens on loopback only;
- poison records are produced straight into every topic of the chain;
- the whole stack is stopped (scripts/stop_all.sh) and started again.

The truth for a window is what the API put into Kafka: the test's own events in emoji-events
(each test has its own user-id prefix and its own windows). Every process is stopped through
the system's supervisord, also on failure; the test kills only pids it read from it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from kafka import TopicPartition

from emojistream import config, topology
from emojistream.aggregator.checkpoints import Replay
from emojistream.common import kafka_clients, secrets
from emojistream.common.events import (
    InvalidEvent,
    decode_window_update,
    encode,
    format_timestamp,
    parse_timestamp,
    window_bounds,
)
from testkit.processes import component_pid, component_status, supervisor_runs
from testkit.topics import events_of
from testkit.viewer import RecordingViewer
from tests.services import isolated_env, run_script

pytestmark = pytest.mark.stack

EMOJIS = ("🔥", "😂", "👏", "🎉")
DELIVERY_TIMEOUT_S = 120


# --- processes ----------------------------------------------------------------------------------

class Processes:
    """The system's processes, as its supervisord reports them; remembers every process group
    it has seen, so that nothing is left running at the end."""

    def __init__(self, env: dict):
        self.env = env
        self.var = Path(env["VAR_DIR"])
        self.groups: set[int] = set()
        self.pids: set[int] = set()

    def pids_by_name(self) -> dict[str, int | None]:
        return {name: row["pid"] for name, row in component_status(self.env).items()}

    def pid(self, name: str) -> int:
        return component_pid(self.env, name)

    def remember(self) -> None:
        for pid in self.pids_by_name().values():
            if pid:
                self.pids.add(pid)
                if _pgid(pid) == pid:  # supervisord's child leads a group: its JVM is in it
                    self.groups.add(pid)

    def restarted(self, name: str, old_pid: int, timeout_s: float = 30) -> bool:
        """Whether the supervisor brought ``name`` back (another pid, up) within the time."""
        def back() -> bool:
            row = component_status(self.env)[name]
            return row["state"] == "up" and row["pid"] not in (None, old_pid)
        found = wait_for(back, timeout_s)
        self.remember()
        return found

    def start_all(self) -> None:
        started = run_script("start_all.sh", env=self.env, timeout=400, check=False)
        assert started.returncode == 0, started.stdout + started.stderr
        self.remember()

    def stop_all(self) -> None:
        stopped = run_script("stop_all.sh", env=self.env, timeout=300, check=False)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    def alive(self) -> dict[str, bool]:
        return {name: bool(pid) and _alive(pid) for name, pid in self.pids_by_name().items()}

    def leftovers(self) -> list[int]:
        """Processes of ours still running: remembered pids and members of remembered groups
        (not zombies: they have exited, and PID 1 reaps them when it gets to it)."""
        return sorted(p for p in _all_pids()
                      if (p in self.pids or _pgid(p) in self.groups) and _alive(p))


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _alive(pid: int) -> bool:
    """Running (a zombie is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def sigkill_group(pgid: int) -> list[int]:
    """SIGKILL a process group (a component and its children); its members, once all gone."""
    members = [p for p in _all_pids() if _pgid(p) == pgid]
    os.killpg(pgid, signal.SIGKILL)
    assert wait_for(lambda: not any(_alive(p) for p in members), 30), members
    return members


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    return wait_for(lambda: not _alive(pid), timeout_s)


def wait_for(condition, timeout_s: float, interval_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


# --- viewers and load ---------------------------------------------------------------------------

def registration_url(settings: config.Settings) -> str:
    return f"http://{settings.registration_host}:{settings.registration_port}"


def counts_of(update: dict) -> dict[str, int]:
    return {a["emoji_type"]: a["count"] for a in update["aggregates"]}


class Load:
    """Threads posting batches of events (unique user ids with ``prefix``, timestamp now) to
    POST /emojis; remembers the ids answered 200 and every other outcome."""

    def __init__(self, settings: config.Settings, prefix: str, threads: int = 1,
                 batch: int = 5, interval_s: float = 0.1):
        self.url = f"http://{settings.api_host}:{settings.api_port}/emojis"
        self.prefix, self.batch, self.interval_s = prefix, batch, interval_s
        self.accepted: list[str] = []
        self.windows: set[str] = set()  # of the events answered 200
        self.failures: list[str] = []
        self._window_seconds = settings.window_seconds
        self._sequence = iter(range(10**9))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                self._post(session)
                self._stop.wait(self.interval_s)

    def _post(self, session: requests.Session) -> None:
        with self._lock:
            ids = [f"{self.prefix}-{next(self._sequence)}" for _ in range(self.batch)]
        now = datetime.now(UTC)
        events = [{"user_id": i, "emoji_type": random.choice(EMOJIS),
                   "timestamp": format_timestamp(now)} for i in ids]
        try:
            answer = session.post(self.url, json=events, timeout=10)
        except requests.RequestException as err:
            self.failures.append(type(err).__name__)
            return
        if answer.status_code == 200 and answer.json().get("accepted") == len(events):
            self.accepted.extend(ids)
            self.windows.add(format_timestamp(window_bounds(now, self._window_seconds)[0]))
        else:
            self.failures.append(f"{answer.status_code} {answer.text[:100]}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


# --- Kafka --------------------------------------------------------------------------------------

def read_topic(settings: config.Settings, topic: str) -> list:
    """Every record of ``topic`` now, from the beginning of each partition."""
    consumer = kafka_clients.consumer(settings, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records, deadline = [], time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for batch in consumer.poll(timeout_ms=500).values():
                records += batch
        return records
    finally:
        consumer.close()


def produce(settings: config.Settings, topic: str, values: list,
            record_time: datetime | None = None) -> None:
    """``values`` written straight into ``topic``, with ``record_time`` as the records' time
    (as the API stamps a record with the time it accepted its events): default, now."""
    timestamp_ms = int(record_time.timestamp() * 1000) if record_time else None
    producer = kafka_clients.producer(settings, acks="all")
    try:
        for value in values:
            producer.send(topic, key=b"fault-test", value=value, timestamp_ms=timestamp_ms)
        producer.flush()
    finally:
        producer.close()


def events_in_kafka(settings: config.Settings, prefix: str) -> list[dict]:
    """The events with user ids of ``prefix`` in emoji-events."""
    found = []
    for record in read_topic(settings, settings.emoji_events_topic):
        try:
            events = events_of(record.value)
        except (TypeError, ValueError, RecursionError):
            continue
        found += [event for event in events if isinstance(event, dict)
                  and str(event.get("user_id", "")).startswith(prefix + "-")]
    return found


def window_of(settings: config.Settings, timestamp: str) -> str:
    start, _ = window_bounds(parse_timestamp(timestamp), settings.window_seconds)
    return format_timestamp(start)


def expected_windows(settings: config.Settings, events: list[dict]) -> dict[str, dict]:
    """The true count of each emoji in each window, from the events themselves."""
    windows: dict[str, Counter] = defaultdict(Counter)
    for event in events:
        windows[window_of(settings, event["timestamp"])][event["emoji_type"]] += 1
    return {window: dict(counts) for window, counts in windows.items()}


def window_versions(settings: config.Settings, windows) -> set[str]:
    """The distinct updates of ``windows`` the aggregator wrote (canonical JSON)."""
    versions = set()
    for record in read_topic(settings, settings.aggregated_topic):
        try:
            update = decode_window_update(record.value)
        except InvalidEvent:
            continue
        if update["window_start"] in windows:
            versions.add(canonical(update))
    return versions


def as_written(update: dict) -> dict:
    """An update as the aggregator wrote it: without the "watching" its server added."""
    return {name: value for name, value in update.items() if name != "watching"}


def canonical(update: dict) -> str:
    return json.dumps(update, ensure_ascii=False, sort_keys=True)


# --- assertions ---------------------------------------------------------------------------------

def assert_viewers_get(viewers: list[RecordingViewer], expected: dict[str, dict]) -> None:
    """Every viewer's last update of every window has exactly the expected counts."""
    def wrong():
        return {(v.client_id, w): (v.last_counts().get(w), counts)
                for v in viewers for w, counts in expected.items()
                if v.last_counts().get(w) != counts}
    assert wait_for(lambda: not wrong(), DELIVERY_TIMEOUT_S, interval_s=0.5), wrong()


def run_load_and_accept_all(settings, prefix: str, during) -> dict[str, dict]:
    """Load while ``during()`` runs (plus a little before and after); every event answered 200
    and in Kafka exactly once. The expected counts of the load's windows."""
    load = Load(settings, prefix)
    try:
        during(load)
        time.sleep(2)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    events = events_in_kafka(settings, prefix)
    assert Counter(e["user_id"] for e in events) == Counter(load.accepted)
    return expected_windows(settings, events)


def seen_windows(viewer: RecordingViewer, windows: set[str]) -> bool:
    return any(m["window_start"] in windows for m in viewer.messages)


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def system(tmp_path_factory):
    env = isolated_env(tmp_path_factory.mktemp("faults"))
    # One registration worker: one balancer spreads the viewers one per cluster exactly (two
    # workers each spread their own: tests/test_delivery.py measures that).
    env["REGISTRATION_WORKERS"] = "1"
    # Every version of every window to every viewer that stays connected, even while a server
    # catches up on a backlog (which conflation would thin out: tests/test_ws_server.py).
    env["WS_CONFLATE"] = "false"
    processes = Processes(env)
    try:
        processes.start_all()
        yield processes, config.load(env)
    finally:
        processes.stop_all()
        left = processes.leftovers()
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert left == [], f"still running after stop_all.sh: {left}"
        assert not supervisor_runs(processes.env)


@pytest.fixture(scope="module")
def viewers(system):
    _, settings = system
    opened = [RecordingViewer(registration_url(settings), f"fault-viewer-{n}")
              for n in settings.clusters]
    try:
        assert wait_for(lambda: all(v.connected for v in opened), 30)
        assert sorted(v.cluster for v in opened) == [f"cluster{n}" for n in settings.clusters]
        yield opened
    finally:
        for viewer in opened:
            viewer.close()


def wait_until_streaming(viewers: list[RecordingViewer], load: Load,
                         beyond: set[str] = frozenset()) -> None:
    """Until every viewer has received an update of a window of the load's events (one not in
    ``beyond``)."""
    assert wait_for(lambda: all(seen_windows(v, load.windows - beyond) for v in viewers),
                    DELIVERY_TIMEOUT_S), "no update of the load's windows reached the viewers"


# --- poison -------------------------------------------------------------------------------------

def poison_records() -> tuple[list, list]:
    """(records that are not window updates, window-update-shaped records whose times are
    unreadable): random bytes, huge records, deep nesting, JSON of the wrong shape, events
    the aggregator must skip (a malformed array, a far-future time)."""
    rng = random.Random(7)
    now = format_timestamp(datetime.now(UTC))
    not_updates = [
        b"\xff" + rng.randbytes(255),
        b"\xff" + rng.randbytes(900_000),
        b'{"window_start": "' + b"a" * 900_000 + b'"}',
        encode({"user_id": "u" * 900_000, "emoji_type": "🔥", "timestamp": now}),
        b"[" * 100_000,
        b"[1, 2, 3]", b"null", b'"a string"', b'{"window_start": 7}', b'{"aggregates": "many"}',
        b'{"window_start": "a", "window_end": "b", "aggregates": [{"emoji_type": "x", '
        b'"count": true}]}',
        encode({"user_id": "u", "emoji_type": "🍕", "timestamp": now}),
        None,
        # A malformed array of events, and an event of the year 9999 (it would move the
        # aggregator's watermark past every later event: nothing would be counted any more).
        b'[{"user_id": "u", "emoji_type": "\xf0\x9f\x94\xa5", "timestamp": "' + now.encode()
        + b'"}, 7]',
        encode({"user_id": "x", "emoji_type": "🔥", "timestamp": "9999-01-01T00:00:00.000Z"}),
    ]
    bad_times = [
        b'{"window_start": "not a time", "window_end": "b", "aggregates": []}',
        b'{"window_start": "0001-01-01T00:00:00+14:00", "window_end": "b", '
        b'"aggregates": [{"emoji_type": "\\ud800", "count": 1}]}',
    ]
    return not_updates, bad_times


def log_text(processes: Processes, name: str) -> str:
    return (processes.var / "logs" / f"{name}.log").read_text(errors="replace")


def skip_counts(processes: Processes, settings) -> dict[str, int]:
    """What each component has logged as skipped so far."""
    counts = {"spark_aggregator": sum(
        int(line.split("skipped ")[1].split()[0])
        for line in log_text(processes, "spark_aggregator").splitlines()
        if "not valid events" in line)}
    relays = ["main_publisher", *(f"cluster_publisher_{n}" for n in settings.clusters),
              *(f"subscriber_{n}_{k}" for n in settings.clusters
                for k in range(1, settings.subscribers_per_cluster + 1))]
    for name in relays:
        counts[name] = log_text(processes, name).count("skipping record at")
    for n in settings.clusters:
        counts[f"ws_server_{n}"] = log_text(processes, f"ws_server_{n}").count(
            "skipped an invalid update")
    return counts


def health_ok(settings) -> dict[str, int]:
    urls = {"emoji_api": f"http://{settings.api_host}:{settings.api_port}/health",
            "registration_api": f"http://{settings.registration_host}:"
                                f"{settings.registration_port}/health"}
    urls.update({f"ws_server_{n}":
                 f"http://{settings.ws_host}:{topology.ws_port(settings, n)}/health"
                 for n in settings.clusters})
    return {name: requests.get(url, timeout=5).status_code for name, url in urls.items()}


def test_poison_in_every_topic_is_skipped_counted_and_logged(system, viewers):
    processes, settings = system
    pids = processes.pids_by_name()
    before = skip_counts(processes, settings)
    not_updates, bad_times = poison_records()
    poison = not_updates + bad_times
    topics = [settings.emoji_events_topic, settings.aggregated_topic,
              *(settings.cluster_topic(n) for n in settings.clusters),
              *(settings.subscribers_topic(n) for n in settings.clusters)]

    def inject(load):
        wait_until_streaming(viewers, load)
        for topic in topics:
            produce(settings, topic, poison)
        time.sleep(3)

    expected = run_load_and_accept_all(settings, "poison", inject)
    assert_viewers_get(viewers, expected)

    want = {name: before[name] + len(not_updates) for name in before}
    want["spark_aggregator"] = before["spark_aggregator"] + len(poison)
    for n in settings.clusters:
        # Updates with unreadable times pass the publishers and subscribers (they are shaped
        # like updates): each subscribers topic holds them three times (forwarded from
        # aggregated-emoji-topic, from clusterN-topic, and produced there), and each of the
        # cluster's subscribers hands every copy to the server, which drops them.
        want[f"ws_server_{n}"] = (before[f"ws_server_{n}"]
                                  + 3 * settings.subscribers_per_cluster * len(bad_times))
    assert wait_for(lambda: skip_counts(processes, settings) == want, 60), \
        (skip_counts(processes, settings), want)
    time.sleep(2)
    assert skip_counts(processes, settings) == want
    assert processes.pids_by_name() == pids
    assert all(processes.alive().values()), processes.alive()
    assert set(health_ok(settings).values()) == {200}
    for name in want:  # each skip is a warning with the running count
        marker = "skipped in all)" if name == "spark_aggregator" else "so far)"
        assert marker in log_text(processes, name), name


# --- crashes and restarts -----------------------------------------------------------------------

def test_publishers_and_a_websocket_server_killed_come_back_and_lose_no_update(system,
                                                                              viewers):
    """The supervisor restarts each within 30 s; the publishers resume from their commits, so
    the other servers' viewers get every version of every window. The killed server's viewer
    reconnects (to it or another cluster) and gets the last version of every window from its
    new server's snapshot; the running counts sent while it was away are gone for it."""
    processes, settings = system
    killed = ["main_publisher", "cluster_publisher_1", "ws_server_2"]

    before = {}  # client id -> (cluster, connections) when the kills began

    def crash(load):
        wait_until_streaming(viewers, load)
        before.update({v.client_id: (v.cluster, v.connections) for v in viewers})
        pids = {name: processes.pid(name) for name in killed}
        for name, pid in pids.items():
            os.kill(pid, signal.SIGKILL)
            assert wait_for_exit(pid, 10), name
        for name, pid in pids.items():
            assert processes.restarted(name, pid), f"{name} is not back within 30 s"
        assert all(processes.alive().values()), processes.alive()
        assert {n: component_status(processes.env)[n]["restarts"] for n in killed} == \
            dict.fromkeys(killed, 1)

    expected = run_load_and_accept_all(settings, "publishers", crash)
    assert_viewers_get(viewers, expected)
    reconnects = {v.client_id: v.connections - before[v.client_id][1] for v in viewers}
    moved = {client for client, (cluster, _) in before.items() if cluster == "cluster2"}
    assert reconnects == {client: int(client in moved) for client in reconnects}
    versions = window_versions(settings, expected)
    for viewer in viewers:
        if viewer.client_id not in moved:
            received = {canonical(as_written(m)) for m in viewer.messages
                        if m["window_start"] in expected}
            assert received == versions, (viewer.cluster, len(received), len(versions))


def test_api_stopped_under_load_delivers_everything_it_answered_200_for(system):
    processes, settings = system
    load = Load(settings, "sigterm", threads=3, batch=20, interval_s=0.02)
    try:
        assert wait_for(lambda: len(load.accepted) >= 500, 30)
        pid = processes.pid("emoji_api")
        logged_before = len(log_text(processes, "emoji_api"))
        os.kill(pid, signal.SIGTERM)
        assert wait_for_exit(pid, 40), "emoji_api did not exit within 40 s"
        load.stop()
        log = log_text(processes, "emoji_api")[logged_before:]
        assert log.count("producer closed; 0 event(s) lost since start") == \
            settings.api_workers, log[-2000:]
        in_kafka = Counter(e["user_id"] for e in events_in_kafka(settings, "sigterm"))
        assert load.failures, "the load never met the stopped API"
        assert all(in_kafka[i] == 1 for i in load.accepted), \
            sum(1 for i in load.accepted if in_kafka[i] != 1)
    finally:
        load.stop()
        assert processes.restarted("emoji_api", pid), "emoji_api is not back within 30 s"


def test_aggregator_killed_mid_stream_comes_back_with_exact_counts(system, viewers):
    processes, settings = system

    def crash(load):
        wait_until_streaming(viewers, load)
        group = processes.pid("spark_aggregator")
        members = sigkill_group(group)
        assert len(members) >= 2, "the aggregator's Spark JVM was not in its process group"
        assert processes.restarted("spark_aggregator", group), "not back within 30 s"
        wait_until_streaming(viewers, load, beyond=set(load.windows))

    expected = run_load_and_accept_all(settings, "aggregator", crash)
    assert len(expected) >= 5, expected
    assert_viewers_get(viewers, expected)


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp{,6} write them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def test_sparks_ui_listens_on_loopback_and_kills_no_job(system, viewers):
    """The reproduced attack: one POST to the UI's kill URL stopped all counting for good."""
    processes, settings = system
    pid = processes.pid("spark_aggregator")
    ui = log_text(processes, "spark_aggregator").rsplit("Spark's UI: ", 1)[1].split()[0]
    assert ui.startswith("http://127.0.0.1:"), ui
    port = int(ui.rstrip("/").rsplit(":", 1)[1])
    assert listening_addresses(port) and listening_addresses(port) <= LOOPBACK, \
        listening_addresses(port)

    def attack(load):
        wait_until_streaming(viewers, load)
        for job in range(0, 400):
            requests.post(f"{ui}/jobs/job/kill/?id={job}", timeout=5)
            requests.post(f"{ui}/stages/stage/kill/?id={job}", timeout=5)

    expected = run_load_and_accept_all(settings, "ui-attack", attack)
    assert_viewers_get(viewers, expected)
    assert processes.pid("spark_aggregator") == pid
    assert "killed via Web UI" not in log_text(processes, "spark_aggregator")


# --- history and moments ------------------------------------------------------------------------

def history(settings, stream_id: str, kind: str, start: str, end: str) -> dict:
    answer = requests.get(f"{registration_url(settings)}/streams/{stream_id}/{kind}",
                          params={"from": start, "to": end}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_history_has_the_final_counts_viewers_received_across_an_aggregator_restart(
        system, viewers):
    processes, settings = system

    def crash(load):
        wait_until_streaming(viewers, load)
        time.sleep(4)
        group = processes.pid("spark_aggregator")
        sigkill_group(group)
        assert processes.restarted("spark_aggregator", group), "not back within 30 s"
        wait_until_streaming(viewers, load, beyond=set(load.windows))
        time.sleep(4)

    expected = run_load_and_accept_all(settings, "history", crash)
    assert len(expected) >= 8, expected
    assert_viewers_get(viewers, expected)
    first, last = min(expected), max(expected)
    end = format_timestamp(parse_timestamp(last) + timedelta(seconds=settings.window_seconds))
    answer = history(settings, "main", "windows", first, end)
    assert (answer["from"], answer["to"], answer["order"], answer["next_from"]) == (
        first, end, "oldest first", None)
    windows = answer["windows"]
    assert [w["window_start"] for w in windows] == sorted(expected)  # every one, oldest first
    assert {w["window_start"]: counts_of(w) for w in windows} == expected
    for viewer in viewers:  # what each viewer received last of each window
        assert {w: viewer.last_counts()[w] for w in expected} == expected


def post_window(settings, stream_id: str, start: datetime, count: int) -> None:
    """``count`` reactions into the window that starts at ``start``, waited for."""
    time.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds()))
    moment = format_timestamp(start + timedelta(milliseconds=500))
    events = [{"user_id": f"m-{i}", "emoji_type": "🔥", "timestamp": moment,
               "stream_id": stream_id} for i in range(count)]
    answer = requests.post(f"http://{settings.api_host}:{settings.api_port}/emojis",
                           json=events, timeout=30)
    assert (answer.status_code, answer.json()["accepted"]) == (200, count), answer.text


def test_a_burst_of_ten_times_the_background_is_a_moment_and_its_neighbours_are_not(system):
    _, settings = system
    stream_id = f"moments-{random.randrange(10**6)}"
    admin_key = secrets.all_secrets(settings)[secrets.ADMIN_KEY]
    added = requests.post(f"{registration_url(settings)}/streams", json={"stream_id": stream_id},
                          headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
    assert added.status_code == 201, added.text
    watchers = [RecordingViewer(registration_url(settings), f"moment-viewer-{n}",
                                stream_id=stream_id) for n in settings.clusters]
    try:
        assert wait_for(lambda: all(v.connected for v in watchers), 30)
        # (Spread by the balancer over the clusters' loads: after other tests, not one each.)
        now = datetime.now(UTC)
        first = window_bounds(now, settings.window_seconds)[1] + timedelta(
            seconds=settings.window_seconds)
        # 8 windows of 10 reactions, one of 100, then 3 of 10 again.
        counts = [10] * 8 + [100] + [10] * 3
        starts = [first + timedelta(seconds=settings.window_seconds * i)
                  for i in range(len(counts))]
        for start, count in zip(starts, counts, strict=True):
            post_window(settings, stream_id, start, count)
        expected = {format_timestamp(s): {"🔥": c} for s, c in zip(starts, counts, strict=True)}
        burst = format_timestamp(starts[8])
        assert_viewers_get(watchers, expected)
        for viewer in watchers:  # every server judged the same
            marked = {w: u.get("moment") for w, u in viewer.last_updates().items()
                      if w in expected}
            assert marked == {w: (True if w == burst else None) for w in expected}, \
                viewer.cluster
        end = format_timestamp(starts[-1] + timedelta(seconds=settings.window_seconds))
        windows = history(settings, stream_id, "windows", format_timestamp(first), end)
        assert {w["window_start"]: (counts_of(w), w.get("moment"))
                for w in windows["windows"]} == {
            w: (c, True if w == burst else None) for w, c in expected.items()}
        moments = history(settings, stream_id, "moments", format_timestamp(first), end)
        assert [(m["window_start"], m["total"], m["previous_median"], m["moment"])
                for m in moments["moments"]] == [(burst, 100, 10.0, True)]
    finally:
        for viewer in watchers:
            viewer.close()


def test_whole_stack_restart_resumes_without_counting_a_window_twice(system, viewers):
    processes, settings = system
    expected = run_load_and_accept_all(
        settings, "before-restart",
        lambda load: wait_until_streaming(viewers, load))
    assert_viewers_get(viewers, expected)
    last_window = max(expected)
    finals = {w: [v.last_counts().get(w) for v in viewers] for w in expected}
    seen_before = [len(v.messages) for v in viewers]
    connections = [v.connections for v in viewers]

    processes.stop_all()
    assert not supervisor_runs(processes.env)
    assert processes.leftovers() == []
    processes.start_all()
    assert wait_for(lambda: all(v.connections > c and v.connected
                                for v, c in zip(viewers, connections, strict=True)), 60)

    # Late events for the last window before the restart, straight into Kafka: the restored
    # aggregator state still holds that window, so its count grows by exactly these.
    late_moment = format_timestamp(parse_timestamp(last_window) + timedelta(milliseconds=500))
    late = [{"user_id": f"late-{i}", "emoji_type": "🎯", "timestamp": late_moment}
            for i in range(7)]
    # Records accepted back then and delivered only now (a producer that retried through an
    # outage): their time is the acceptance time, so they are not untimely, only late.
    produce(settings, settings.emoji_events_topic, [encode(e) for e in late],
            record_time=parse_timestamp(late_moment))
    expected_last = {**expected[last_window], "🎯": 7}
    assert_viewers_get(viewers, {last_window: expected_last})
    after = run_load_and_accept_all(
        settings, "after-restart", lambda load: wait_until_streaming(viewers, load))
    assert_viewers_get(viewers, after)

    for viewer, start in zip(viewers, seen_before, strict=True):
        for message in viewer.messages[start:]:
            window = message["window_start"]
            if window in expected and window != last_window:
                assert counts_of(message) == expected[window], (window, finals[window])


# --- the aggregator's checkpoint reset (docs/operations.md) ------------------------------------

def updates_written_after(settings: config.Settings, offset: int) -> list[dict]:
    """The window updates the aggregator wrote from ``offset`` of its topic on."""
    return [json.loads(record.value)
            for record in read_topic(settings, settings.aggregated_topic)
            if record.offset >= offset]


def test_a_reset_aggregator_counts_every_event_since_the_replay_time_again(system, viewers):
    """scripts/reset_aggregator.sh, what recovers a checkpoint whose watermark a bad record
    moved ahead: the windows it writes after the reset are complete and exact, it writes none
    that the replay holds only in part, and counting goes on."""
    processes, settings = system
    replay_from = datetime.now(UTC)

    def long_load(load):  # windows from the replay's first whole one on, too
        wait_until_streaming(viewers, load)
        wait_for(lambda: datetime.now(UTC) > replay_from + timedelta(seconds=14), 30)

    expected = run_load_and_accept_all(settings, "before-reset", long_load)
    assert_viewers_get(viewers, expected)
    written_before = len(read_topic(settings, settings.aggregated_topic))

    reset = run_script("reset_aggregator.sh", "--replay-from", format_timestamp(replay_from),
                       env=processes.env, timeout=400, check=False)
    assert reset.returncode == 0, reset.stdout + reset.stderr
    processes.remember()
    first_window = Replay.starting(replay_from, settings).first_window
    replayed = {w: c for w, c in expected.items() if parse_timestamp(w) >= first_window}
    assert len(replayed) >= 2, (expected, first_window)

    def last_written() -> dict[str, dict]:
        return {u["window_start"]: counts_of(u)
                for u in updates_written_after(settings, written_before)}

    assert wait_for(lambda: all(last_written().get(w) == c for w, c in replayed.items()), 180), \
        (last_written(), replayed)
    assert min(parse_timestamp(w) for w in last_written()) >= first_window
    kept = list((processes.var / "spark" / "checkpoints").glob("aggregator.before-*"))
    assert len(kept) == 1 and (kept[0] / "offsets").is_dir()

    after = run_load_and_accept_all(
        settings, "after-reset", lambda load: wait_until_streaming(viewers, load))
    assert_viewers_get(viewers, after)
