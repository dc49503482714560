"""spark_aggregator.py on a real Spark standalone cluster (a master and a worker started by
scripts/spark_cluster.sh), reading from and writing to the test run's Kafka broker."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyspark
import pytest

from emojistream import config
from emojistream.common import kafka_clients
from tests.services import REPO_ROOT, free_port, get_json, run_script, running

pytestmark = [pytest.mark.spark, pytest.mark.kafka]


@pytest.fixture(scope="module")
def cluster_env(request, test_env, tmp_path_factory) -> dict:
    """The test run's settings plus a Spark cluster of its own: a master and one worker, started
    while the test run's Kafka starts."""
    env = dict(test_env,
               SPARK_MASTER_PORT=str(free_port()), SPARK_MASTER_WEBUI_PORT=str(free_port()),
               SPARK_WORKER_WEBUI_PORT=str(free_port()), SPARK_WORKER_CORES="2",
               SPARK_WORKER_MEMORY="1g", SPARK_DAEMON_MEMORY="256m",
               SPARK_EXECUTOR_MEMORY="512m", SPARK_EXECUTOR_CORES="1", SPARK_CORES_MAX="1",
               SPARK_DRIVER_HOST="localhost", SPARK_DRIVER_MEMORY="512m",
               SPARK_SHUFFLE_PARTITIONS="1",
               VAR_DIR=str(tmp_path_factory.mktemp("spark-cluster-var")))
    starting = subprocess.Popen([str(REPO_ROOT / "scripts" / "spark_cluster.sh"), "start",
                                 "--workers", "1"], env=env, cwd=REPO_ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        request.getfixturevalue("kafka")
        output, _ = starting.communicate(timeout=180)
        assert starting.returncode == 0, output
        yield env
    finally:
        if starting.poll() is None:
            starting.kill()
            starting.wait()
        stopped = run_script("spark_cluster.sh", "stop", env=env, check=False, timeout=90)
        assert "the master stopped" in stopped.stdout, stopped.stdout + stopped.stderr


def test_status_names_the_master_and_its_worker(cluster_env):
    status = run_script("spark_cluster.sh", "status", env=cluster_env)
    assert f"at spark://localhost:{cluster_env['SPARK_MASTER_PORT']}" in status.stdout
    assert "worker 1 runs (pid" in status.stdout
    assert "the master counts 1 live worker(s)" in status.stdout


def test_the_master_and_the_worker_load_the_projects_log4j(cluster_env):
    """One Log4j in every JVM: the daemons' classpath starts with lib/log4j, the brokers'
    version (jvm/log4j/pom.xml), and they read config/spark-log4j2.properties."""
    status = run_script("spark_cluster.sh", "status", env=cluster_env).stdout
    pids = [int(line.split("(pid ")[1].split(")")[0].split(",")[0])
            for line in status.splitlines() if "(pid " in line]
    assert len(pids) == 2, status
    for pid in pids:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        classpath = argv[argv.index("-cp") + 1].split(":")
        assert classpath[0] == str(REPO_ROOT / "lib" / "log4j" / "*"), classpath
        assert (f"-Dlog4j2.configurationFile={REPO_ROOT / 'config' / 'spark-log4j2.properties'}"
                in argv)


def window_start(seconds_ago: int) -> datetime:
    now = int(time.time()) - seconds_ago
    return datetime.fromtimestamp(now - now % 2, tz=UTC)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def test_aggregator_runs_on_the_cluster_with_exact_counts(cluster_env, kafka, tmp_path):
    env = dict(cluster_env, EMOJI_EVENTS_TOPIC="sc-events", AGGREGATED_TOPIC="sc-aggregated",
               CLUSTER_COUNT="1", CLUSTER_TOPIC_TEMPLATE="sc-cluster{n}",
               SUBSCRIBERS_TOPIC_TEMPLATE="sc-cluster{n}-subs", EMOJIS="🔥,😂,🎉",
               SPARK_MASTER=f"spark://localhost:{cluster_env['SPARK_MASTER_PORT']}")
    settings = config.load(env)
    run_script("create_topics.sh", env=env)
    first, second = window_start(120), window_start(120) + timedelta(seconds=2)
    events = ([("🔥", f"u{i % 25}", first + timedelta(milliseconds=10 * i)) for i in range(130)]
              + [("😂", f"v{i}", first + timedelta(milliseconds=1500)) for i in range(7)]
              + [("🎉", "w", second + timedelta(milliseconds=999)) for _ in range(3)])
    producer = kafka_clients.producer(settings)
    for emoji, user, moment in events:  # each record stamped with its event's time, as the API
        producer.send(settings.emoji_events_topic, key=user.encode(), value=json.dumps(
            {"user_id": user, "emoji_type": emoji, "timestamp": iso(moment)}).encode(),
            timestamp_ms=int(moment.timestamp() * 1000))
    producer.flush()
    producer.close()

    expected = {
        f"main/{iso(first)}": [
            {"emoji_type": "🔥", "count": 130, "normalized_count": 2, "unique_users": 25},
            {"emoji_type": "😂", "count": 7, "normalized_count": 0, "unique_users": 7}],
        f"main/{iso(second)}": [
            {"emoji_type": "🎉", "count": 3, "normalized_count": 0, "unique_users": 1}]}
    consumer = kafka_clients.consumer(settings, settings.aggregated_topic,
                                      auto_offset_reset="earliest", consumer_timeout_ms=1000)
    latest: dict[str, list] = {}
    with running(tmp_path, "spark_aggregator", "spark_aggregator.py", "--checkpoint",
                 str(tmp_path / "checkpoint"), env=env) as aggregator:
        # Generous: on a loaded 2-core machine the executor's start and the first batch took
        # from one to three minutes.
        deadline = time.monotonic() + 300
        while latest != expected:
            assert aggregator.process.poll() is None, aggregator.log()
            assert time.monotonic() < deadline, f"windows {latest}\n{aggregator.log()}"
            for record in consumer:
                latest[record.key.decode()] = json.loads(record.value)["aggregates"]
        consumer.close()
        assert "master spark://localhost:" in aggregator.log()
        app = running_application(cluster_env)
        assert app["name"] == "emoji-aggregator" and app["cores"] == 1
        assert aggregator.stop(timeout_s=60) == 0
    assert latest == expected
    # The executor ran in the worker's work folder and fetched the connector jars there.
    fetched = {p.name for p in Path(cluster_env["VAR_DIR"], "spark-cluster", "work").rglob("*.jar")}
    assert f"spark-sql-kafka-0-10_2.13-{pyspark.__version__}.jar" in fetched, fetched


def running_application(env: dict) -> dict:
    status, state = get_json(f"http://localhost:{env['SPARK_MASTER_WEBUI_PORT']}/json/")
    assert status == 200
    assert len(state["activeapps"]) == 1, state
    return state["activeapps"][0]
