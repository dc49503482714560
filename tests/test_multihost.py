"""The system deployed over 13 hosts of the test's own (network namespaces on one bridge, see
testkit/netns.py), as docs/deploy.md describes: a topology file, scripts/start_host.sh on each
host, every secret given in the environment, no file shared but the Spark checkpoint (the
stand-in for a cluster's shared storage).

    3 Kafka brokers (replication factor 3), a Spark master, a Spark worker, the aggregator with
    the main publisher, 2 ingest hosts, 2 registration hosts, 3 WebSocket hosts (each with its
    subscribers and cluster publisher), a client host (viewers and a sender).

Reactions flow from the client host while (1) every window reaches the viewers exact on every
WebSocket host, (2) a WebSocket host and a broker host are cut off the bridge: the cut host's
viewers reconnect elsewhere and every event answered 200 is counted, (3) one component of each
kind is killed with SIGKILL in turn: its supervisor brings it back, and no window is lost or
counted twice. The namespaces and everything in them are removed even when the test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from emojistream.common.events import format_timestamp, parse_timestamp, window_bounds
from testkit import netns
from testkit.sandbox import isolated_env
from tests.services import REPO_ROOT

pytestmark = [pytest.mark.stack, pytest.mark.hosts]

WS_HOSTS = ["ws1", "ws2", "ws3"]
HOSTS = ["kafka1", "kafka2", "kafka3", "spark", "worker", "ingest1", "ingest2", "reg1", "reg2",
         *WS_HOSTS, "client"]
RUNS = {"kafka1": ["kafka_1"], "kafka2": ["kafka_2"], "kafka3": ["kafka_3"],
        "spark": ["spark_master", "spark_aggregator", "main_publisher"],
        "worker": ["spark_worker_1"], "ingest1": ["emoji_api"], "ingest2": ["emoji_api"],
        "reg1": ["registration_api"], "reg2": ["registration_api"], "client": []}
for _n, _host in enumerate(WS_HOSTS, start=1):
    RUNS[_host] = [f"ws_server_{_n}", f"subscriber_{_n}_1", f"subscriber_{_n}_2",
                   f"cluster_publisher_{_n}"]
# One component of each kind, and the host it is killed on.
KILLED = [("kafka1", "kafka_1"), ("spark", "spark_master"), ("worker", "spark_worker_1"),
          ("spark", "spark_aggregator"), ("spark", "main_publisher"),
          ("ws1", "cluster_publisher_1"), ("ws2", "subscriber_2_1"), ("ws1", "ws_server_1"),
          ("reg1", "registration_api"), ("ingest1", "emoji_api")]
WINDOW_S = 2
SETTLE_S = 150  # how long windows may take to reach the viewers exact, on a loaded machine


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    why = netns.available()
    if why:
        pytest.fail(f"the multi-host test needs network namespaces: {why}")
    base = tmp_path_factory.mktemp("hosts")
    with netns.Network(HOSTS) as net:
        topology = base / "topology.toml"
        topology.write_text("".join(
            f'[hosts.{h}]\naddress = "{net.addresses[h]}"\nrun = {json.dumps(RUNS[h])}\n\n'
            for h in HOSTS if RUNS[h]))
        shared = {"TOPOLOGY_FILE": str(topology), "CLUSTER_COUNT": "3",
                  "TOKEN_SECRET": secrets.token_urlsafe(32),
                  "SUBSCRIBER_KEY": secrets.token_urlsafe(32),
                  "ADMIN_KEY": secrets.token_urlsafe(32),
                  "SPARK_CHECKPOINT": str(base / "shared" / "checkpoint"),
                  "KAFKA_HEAP": "384m", "SPARK_DRIVER_MEMORY": "768m",
                  "SPARK_EXECUTOR_MEMORY": "768m", "SPARK_WORKER_MEMORY": "1g",
                  "SPARK_WORKER_CORES": "1", "SPARK_CORES_MAX": "1",
                  "SPARK_DAEMON_MEMORY": "256m", "API_WORKERS": "1", "REGISTRATION_WORKERS": "1",
                  "WS_PING_INTERVAL_S": "1", "WS_PING_TIMEOUT_S": "2",
                  "WS_HEALTH_TIMEOUT_S": "1", "READY_TIMEOUT": "240"}
        envs = {h: host_env(base, h, shared) for h in HOSTS}
        try:
            start(net, envs, ["kafka1", "kafka2", "kafka3"])
            start(net, envs, ["spark"])
            start(net, envs, ["worker", "ingest1", "ingest2", "reg1", "reg2", *WS_HOSTS])
            yield net, envs, base
        finally:
            # Every host but the brokers stops as an operator stops it, while the brokers are
            # still there to be left cleanly. The brokers are then killed with their namespaces:
            # three KRaft controllers stopping together lose their quorum, and each would wait
            # out its supervisor's stop timeout for a controlled shutdown nobody can grant.
            stopped = [h for h in HOSTS if RUNS[h] and not h.startswith("kafka")]
            with ThreadPoolExecutor(len(stopped)) as pool:
                list(pool.map(lambda h: net.run(h, str(REPO_ROOT / "scripts" / "stop_all.sh"),
                                                env=envs[h], check=False), stopped))


def host_env(base: Path, host: str, shared: dict) -> dict:
    """The environment of one host: a VAR_DIR of its own, the topology, the secrets."""
    env = isolated_env(base / host / "var")
    for name in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "API_PORT", "REGISTRATION_PORT",
                 "WS_FIRST_PORT", "WS_PUBLISH_FIRST_PORT", "METRICS_FIRST_PORT",
                 "KAFKA_METRICS_PORT", "SPARK_UI_PORT"):
        env.pop(name)  # every host has ports of its own: the defaults
    return {**env, **shared, "EMOJISTREAM_HOST": host}


def start(net: netns.Network, envs: dict, hosts: list[str]) -> None:
    """scripts/start_host.sh on each of ``hosts`` at once."""
    def one(host: str):
        return host, net.run(host, str(REPO_ROOT / "scripts" / "start_host.sh"), host,
                             env=envs[host], timeout=600, check=False)
    with ThreadPoolExecutor(len(hosts)) as pool:
        for host, started in pool.map(one, hosts):
            assert started.returncode == 0, (host, started.stdout + started.stderr)


def status(net: netns.Network, envs: dict, host: str) -> dict[str, dict]:
    shown = net.run(host, str(REPO_ROOT / ".venv" / "bin" / "python"), "-m",
                    "emojistream.ops.system", "status", "--json", env=envs[host], check=False)
    return {row["name"]: row for row in json.loads(shown.stdout)}


class Client:
    """testkit/netclient.py on the client host: viewers and a sender, read through its file."""

    def __init__(self, net: netns.Network, env: dict, base: Path):
        self.control, self.out = base / "client-control", base / "client.json"
        self.control.write_text("")
        urls = {kind: ",".join(f"http://{net.addresses[h]}:{port}" for h in hosts)
                for kind, hosts, port in (("registration", ["reg1", "reg2"], 5001),
                                          ("api", ["ingest1", "ingest2"], 5000))}
        self.apis = urls["api"].split(",")
        self.process = net.popen("client", str(REPO_ROOT / ".venv" / "bin" / "python"), "-m",
                                 "testkit.netclient", "--registration", urls["registration"],
                                 "--api", urls["api"], "--viewers", "9", "--rate", "60",
                                 "--control", str(self.control), "--out", str(self.out),
                                 env={**env, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT)

    def state(self) -> dict:
        for _attempt in range(50):
            if self.out.exists():
                return json.loads(self.out.read_text())
            time.sleep(0.2)
        raise AssertionError("the client host wrote nothing")

    def pause(self, api: str | None) -> None:
        self.control.write_text(f"pause {api}\n" if api else "")

    def stop(self) -> None:
        self.control.write_text("stop\n")
        try:
            self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def expected_windows(accepted: list[dict]) -> dict[str, Counter]:
    windows: dict[str, Counter] = defaultdict(Counter)
    for event in accepted:
        start, _ = window_bounds(parse_timestamp(event["timestamp"]), WINDOW_S)
        windows[format_timestamp(start)][event["emoji_type"]] += 1
    return windows


def last_counts(messages: list[dict]) -> dict[str, dict]:
    return {m["window_start"]: {a["emoji_type"]: a["count"] for a in m["aggregates"]}
            for m in messages if m.get("stream_id", "main") == "main"}


def check(client: Client, since: float, until: float, everyone: bool) -> dict:
    """What is wrong with the windows that began in [since, until): a viewer's last count that
    differs from the events answered 200, a window no viewer got, or (with ``everyone``) a
    window some viewer lacks; {} when nothing is."""
    state = client.state()
    expected = {w: dict(c) for w, c in expected_windows(state["accepted"]).items()
                if since <= parse_timestamp(w).timestamp() < until}
    wrong = {}
    for name, viewer in state["viewers"].items():
        got = last_counts(viewer["messages"])
        for window, counts in expected.items():
            if window in got and got[window] != counts:
                wrong[(name, window)] = (got[window], counts)
            elif window not in got and everyone:
                wrong[(name, window)] = (None, counts)
    for window, counts in expected.items():
        if not any(window in last_counts(v["messages"]) for v in state["viewers"].values()):
            wrong[("nobody", window)] = (None, counts)
    return wrong


def settle(client: Client, since: float, until: float, everyone: bool = True) -> None:
    deadline = time.monotonic() + SETTLE_S
    while (wrong := check(client, since, until, everyone)) and time.monotonic() < deadline:
        time.sleep(2)
    assert not wrong, dict(list(wrong.items())[:10])


def window_after(moment: float) -> float:
    return (int(moment // WINDOW_S) + 1) * WINDOW_S


def test_a_deployment_over_hosts_survives_a_cut_and_a_kill_of_each_kind(deployment):
    net, envs, base = deployment
    client = Client(net, envs["client"], base)
    try:
        # 1. Every window exact at the viewers of every WebSocket host.
        began = window_after(time.time() + 2)
        time.sleep(20)
        clusters = {v["clusters"][-1] for v in client.state()["viewers"].values()}
        assert clusters == {"cluster1", "cluster2", "cluster3"}, clusters
        settle(client, began, window_after(time.time()) - 4)

        # 2. A WebSocket host and a broker host off the bridge.
        on_cut = [n for n, v in client.state()["viewers"].items()
                  if v["clusters"][-1] == "cluster3"]
        cut_at = time.time()
        net.cut("ws3")
        net.cut("kafka2")
        time.sleep(25)
        moved = {n: client.state()["viewers"][n]["clusters"][-1] for n in on_cut}
        assert set(moved.values()) <= {"cluster1", "cluster2"}, moved
        net.restore("ws3")
        net.restore("kafka2")
        # The moved viewers missed the windows of their reconnection; the others, none.
        settle(client, window_after(cut_at), window_after(time.time()) - 4, everyone=False)
        settle(client, window_after(time.time()) + 6, window_after(time.time()) + 10)

        # 3. One component of each kind killed in turn; its supervisor brings it back.
        for host, name in KILLED:
            if name == "emoji_api":  # a crash may lose what it has not yet handed to Kafka
                client.pause(f"http://{net.addresses[host]}:5000")
                time.sleep(2)
            before = status(net, envs, host)[name]
            os.kill(before["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 60
            while True:
                now = status(net, envs, host).get(name, {})
                if now.get("state") == "up" and now.get("pid") != before["pid"]:
                    break
                assert time.monotonic() < deadline, (host, name, now)
                time.sleep(1)
            assert now["restarts"] == before["restarts"] + 1, (name, now)
            client.pause(None)
            time.sleep(3)
        ended = window_after(time.time())
        time.sleep(10)
        settle(client, began, ended, everyone=False)
        assert not client.state()["refused"] or all(
            "Connection" in r or "503" in r or "Timeout" in r for r in client.state()["refused"])
    finally:
        client.stop()
