"""The topology (the one table of components, hosts from a file) and the supervisor that runs it:
supervisord's configuration, its crash counts, log rotation by size, and that nothing the
project did not start is ever signalled. The crash recoveries of the whole system are in
test_faults.py, a deployment over several hosts in test_multihost.py."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from emojistream import config, topology
from emojistream.common import tokens
from emojistream.common.settings import ConfigError
from emojistream.ops import conf, hosts
from emojistream.ops.components import components, deployment
from testkit.processes import component_status, supervisor_runs
from tests.services import REPO_ROOT, isolated_env, run_script, still_sleeping

TOPOLOGY = """
[hosts.k1]
address = "10.9.0.11"
run = ["kafka_1"]
[hosts.k2]
address = "10.9.0.12"
run = ["kafka_2"]
[hosts.k3]
address = "10.9.0.13"
run = ["kafka_3"]
[hosts.spark]
address = "10.9.0.20"
run = ["spark_master", "spark_aggregator", "main_publisher"]
[hosts.worker]
address = "10.9.0.21"
run = ["spark_worker_1"]
[hosts.edge1]
address = "10.9.0.30"
run = ["emoji_api", "registration_api"]
[hosts.edge2]
address = "10.9.0.31"
run = ["emoji_api", "registration_api"]
[hosts.ws1]
address = "10.9.0.41"
run = ["ws_server_1", "subscriber_1_1", "subscriber_1_2", "cluster_publisher_1"]
[hosts.ws2]
address = "10.9.0.42"
run = ["ws_server_2", "subscriber_2_1", "subscriber_2_2", "cluster_publisher_2"]
"""


def test_the_default_topology_is_one_host_in_start_order():
    settings = config.load({"CLUSTER_COUNT": "2"})
    table = components(settings)
    assert [c.name for c in table] == [
        "kafka", "spark_aggregator", "ws_server_1", "ws_server_2", "registration_api",
        "subscriber_1_1", "subscriber_1_2", "subscriber_2_1", "subscriber_2_2",
        "cluster_publisher_1", "cluster_publisher_2", "main_publisher", "emoji_api"]
    by_name = {c.name: c for c in table}
    assert {c.host for c in table} == {"local"}
    assert by_name["kafka"].ready == "tcp://localhost:9092"
    assert by_name["ws_server_2"].ready == "http://localhost:5003/health"
    assert by_name["ws_server_2"].ports == (5003, 5005)  # viewers', subscribers' (after 5002-3)
    assert by_name["ws_server_2"].cluster == 2
    assert by_name["subscriber_2_1"].metrics_url == (
        f"http://localhost:{topology.subscriber_metrics_port(settings, 2, 1)}/metrics")
    assert by_name["subscriber_2_1"].ready == by_name["subscriber_2_1"].metrics_url
    assert by_name["emoji_api"].command == ("emoji_api.py",)
    assert by_name["cluster_publisher_2"].command == ("cluster_publisher.py", "--cluster", "2")


def test_supervisord_restarts_every_component_and_rotates_its_log():
    settings = config.load({"LOG_MAX_BYTES": "5000", "LOG_BACKUPS": "2", "VAR_DIR": "/v%r"})
    text = conf.render(settings, components(settings), Path("/v%r/supervisor"))
    programs = [line for line in text.splitlines() if line.startswith("[program:")]
    assert programs == [f"[program:{c.name}]" for c in components(settings)]
    section = text.split("[program:ws_server_1]")[1].split("\n\n")[0]
    for line in ("autorestart=true", "priority=20", "stdout_logfile_maxbytes=5000",
                 "stdout_logfile_backups=2", "killasgroup=true", "redirect_stderr=true",
                 f"command={sys.executable} {REPO_ROOT / 'ws_server.py'} --cluster 1"):
        assert line in section.splitlines(), line
    assert 'VAR_DIR="/v%%r"' in section  # supervisord interpolates %
    assert "[eventlistener:crashes]" in text


def test_the_control_socket_moves_to_the_temporary_folder_when_var_dir_is_too_deep():
    shallow = Path("/srv/emojistream/var/supervisor")
    assert conf.socket_path(shallow) == shallow / "supervisor.sock"
    deep = Path("/srv/" + "nested/" * 14 + "var/supervisor")
    short = conf.socket_path(deep)
    assert short.parent == Path(tempfile.gettempdir()) and len(str(short)) < 108, short
    assert conf.socket_path(deep) == short  # the scripts find the one supervisord started
    assert conf.socket_path(deep.parent / "other" / "supervisor") != short
    assert f"file={short}" in conf.render(config.load({}), [], deep).splitlines()


def write_topology(tmp_path: Path, text: str = TOPOLOGY) -> str:
    path = tmp_path / "topology.toml"
    path.write_text(text)
    return str(path)


def test_a_topology_file_places_every_component_and_says_where_the_others_are(tmp_path):
    settings = config.load({"TOPOLOGY_FILE": write_topology(tmp_path), "CLUSTER_COUNT": "2"})
    placed = {host: [c.name for c in table] for host, _s, table in deployment(settings)}
    assert placed["edge2"] == ["registration_api", "emoji_api"]
    assert placed["worker"] == ["spark_worker_1"]
    env = hosts.environment(hosts.load(settings.topology_file), "ws2", settings)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "10.9.0.11:9092,10.9.0.12:9092,10.9.0.13:9092"
    assert env["KAFKA_VOTERS"] == "1@10.9.0.11:9093,2@10.9.0.12:9093,3@10.9.0.13:9093"
    assert env["WS_CLUSTER_HOSTS"] == "10.9.0.41,10.9.0.42"
    assert env["SPARK_MASTER"] == "spark://10.9.0.20:7077"
    assert env["SPARK_DRIVER_HOST"] == "10.9.0.20"
    assert (env["WS_HOST"], env["API_HOST"], env["METRICS_HOST"]) == ("10.9.0.42",) * 3
    assert env["API_PUBLIC_URL"] == "http://10.9.0.30:5000"  # for the page: an ingest host
    assert env["API_CORS_ORIGINS"] == "http://10.9.0.30:5001,http://10.9.0.31:5001"
    ids = {hosts.environment(hosts.load(settings.topology_file), h, settings)["KAFKA_CLUSTER_ID"]
           for h in placed}
    assert len(ids) == 1 and len(ids.pop()) == 22  # one id, as Kafka writes them
    ws2 = next(t for h, _s, t in deployment(settings) if h == "ws2")
    assert [c.ready for c in ws2][0] == "http://10.9.0.42:5003/health"


@pytest.mark.parametrize("change, message", [
    ((", \"main_publisher\"]", "]"), "no host runs main_publisher"),
    (("run = [\"kafka_3\"]", "run = [\"kafka_3\", \"ws_server_1\"]"),
     "ws_server_1 runs on k3, ws1"),
    (("run = [\"kafka_3\"]", "run = [\"kafka_3\", \"cron\"]"), "host k3 runs 'cron'"),
])
def test_a_topology_that_does_not_fit_is_refused_naming_why(tmp_path, change, message):
    path = write_topology(tmp_path, TOPOLOGY.replace(*change))
    with pytest.raises(ConfigError, match=message):
        deployment(config.load({"TOPOLOGY_FILE": path, "CLUSTER_COUNT": "2"}))


def test_a_subscriber_away_from_its_loopback_publish_listener_is_refused(tmp_path):
    moved = TOPOLOGY.replace('"subscriber_2_2", ', "").replace(
        'run = ["kafka_3"]', 'run = ["kafka_3", "subscriber_2_2"]')
    path = write_topology(tmp_path, moved)
    with pytest.raises(ConfigError, match=r"subscriber_2_2 runs on k3, ws_server_2 on ws2, whose "
                                          r"publish listener takes only its own host "
                                          r"\(WS_PUBLISH_HOST=127.0.0.1\)"):
        deployment(config.load({"TOPOLOGY_FILE": path, "CLUSTER_COUNT": "2"}))
    settings = config.load({"TOPOLOGY_FILE": path, "CLUSTER_COUNT": "2",
                            "WS_PUBLISH_HOST": "0.0.0.0"})
    k3 = next(s for h, s, _t in deployment(settings) if h == "k3")
    assert topology.ws_publish_url(k3, 2) == "ws://10.9.0.42:5005/publish"


def test_with_tls_on_the_viewers_port_health_and_metrics_come_from_the_publish_listener():
    table = components(config.load({"CLUSTER_COUNT": "2", "WS_TLS_CERT": "/c.pem",
                                    "WS_TLS_KEY": "/k.pem"}))
    ws2 = next(c for c in table if c.name == "ws_server_2")
    assert (ws2.ready, ws2.metrics_url) == ("http://127.0.0.1:5005/health",
                                            "http://127.0.0.1:5005/metrics")


def test_crashes_are_counted_from_supervisords_events(tmp_path):
    counts = tmp_path / "crashes.json"
    events = [("PROCESS_STATE_EXITED", "processname:ws_server_1 groupname:ws_server_1 "
               "from_state:RUNNING expected:0 pid:7"),
              ("PROCESS_STATE_EXITED", "processname:ws_server_1 groupname:ws_server_1 "
               "from_state:STARTING expected:1 pid:8"),
              ("PROCESS_STATE_EXITED", "processname:kafka groupname:kafka "
               "from_state:RUNNING expected:0 pid:9"),
              ("PROCESS_STATE_EXITED", "processname:ws_server_1 groupname:ws_server_1 "
               "from_state:RUNNING expected:0 pid:10")]
    stdin = "".join(f"ver:3.0 server:s serial:{n} pool:crashes poolserial:{n} "
                    f"eventname:{name} len:{len(payload)}\n{payload}"
                    for n, (name, payload) in enumerate(events))
    listener = subprocess.run([sys.executable, "-m", "emojistream.ops.crashes", str(counts)],
                              input=stdin, capture_output=True, text=True, timeout=30,
                              cwd=REPO_ROOT)
    assert listener.stdout == "READY\nRESULT 2\nOK" * 4 + "READY\n"
    assert json.loads(counts.read_text()) == {"ws_server_1": 2, "kafka": 1}


# --- the real supervisord ------------------------------------------------------------------------

@pytest.mark.stack
def test_a_stale_supervisord_pid_file_and_socket_signal_nothing(tmp_path, unrelated_process):
    """Files left by a supervisord that died (or a reboot) name another process now: the
    scripts start and stop through the socket, and never signal that process."""
    env = isolated_env(tmp_path / "var", cluster_count=1)
    run_dir = Path(env["VAR_DIR"]) / "supervisor"
    run_dir.mkdir(parents=True)
    (run_dir / "supervisord.pid").write_text(f"{unrelated_process.pid}\n")
    (run_dir / "supervisor.sock").write_text("")  # no server behind it
    try:
        started = run_script("start_all.sh", "ws_server_1", env=env, timeout=120, check=False)
        assert started.returncode == 0, started.stdout + started.stderr
        assert component_status(env)["ws_server_1"]["state"] == "up"
    finally:
        stopped = run_script("stop_all.sh", env=env, timeout=120, check=False)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not supervisor_runs(env)
    assert still_sleeping(unrelated_process)


@pytest.mark.stack
def test_a_components_log_rotates_at_its_size(tmp_path):
    env = isolated_env(tmp_path / "var", cluster_count=1)
    secret = "s" * 43
    env.update(LOG_MAX_BYTES="4000", LOG_BACKUPS="2", LOG_LEVEL="DEBUG", TOKEN_SECRET=secret)
    settings = config.load(env)
    started = run_script("start_all.sh", "ws_server_1", env=env, timeout=120, check=False)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        url = f"ws://localhost:{topology.ws_port(settings, 1)}/?token="
        for n in range(150):  # two DEBUG lines each: connected, disconnected
            token = tokens.issue(secret, f"viewer-{n}", 1, 60, time.time())
            with connect(url + token, open_timeout=10):
                pass
        logs = Path(env["VAR_DIR"]) / "logs"
        time.sleep(1)
        sizes = {path.name: path.stat().st_size for path in logs.glob("ws_server_1.log*")}
        assert set(sizes) == {"ws_server_1.log", "ws_server_1.log.1", "ws_server_1.log.2"}, sizes
        # supervisord rotates after the write that passes the size: one line more at most.
        assert all(size <= 4000 + 200 for size in sizes.values()), sizes
    finally:
        run_script("stop_all.sh", env=env, timeout=120, check=False)
