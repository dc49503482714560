"""A real Prometheus (Debian's) scraping the whole running system (scripts/start_all.sh on its
own ports and VAR_DIR) with the configuration python -m emojistream.ops.prometheus_config generates:
every target is up, and the accepted-events counter moves by exactly the events sent. Also
scripts/status.sh on that system."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from emojistream.common.events import format_timestamp
from tests.services import REPO_ROOT, free_port, run_script, wait_until

pytestmark = pytest.mark.stack

PROMETHEUS = "/usr/bin/prometheus"
ACCEPTED = "sum(emojistream_api_events_accepted_total)"
REFUSED_INVALID = 'sum(emojistream_api_events_refused_total{reason="invalid"})'


@pytest.fixture(scope="module")
def system(whole_system):
    return whole_system


@pytest.fixture(scope="module")
def prometheus(system, tmp_path_factory):
    """Prometheus on a free port, scraping every 2 s; its base URL. Stopped by its pid,
    checked to still be this Prometheus, also when a test fails."""
    if not Path(PROMETHEUS).exists():
        pytest.fail(f"{PROMETHEUS} is missing: run scripts/setup.sh")
    env, _ = system
    folder = tmp_path_factory.mktemp("prometheus")
    generated = subprocess.run([sys.executable, "-m", "emojistream.ops.prometheus_config",
                                "--interval", "2s"], env=env, cwd=REPO_ROOT, check=True,
                               capture_output=True, text=True).stdout
    (folder / "prometheus.yml").write_text(generated)
    port = free_port()
    with open(folder / "prometheus.log", "w") as log:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url + "/-/ready"), 60, 0.5,
                   f"Prometheus did not start: {(folder / 'prometheus.log').read_text()}")
        yield url
    finally:
        _stop(process)
        shutil.rmtree(folder / "data", ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (then SIGKILL) to our Prometheus, only while its pid is still that process."""
    if process.poll() is not None:
        return
    args = subprocess.run(["ps", "-o", "args=", "-p", str(process.pid)], capture_output=True,
                          text=True).stdout
    if PROMETHEUS in args:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def targets(url: str) -> list[dict]:
    answer = requests.get(url + "/api/v1/targets", timeout=5).json()
    return answer["data"]["activeTargets"]


def query(url: str, expression: str) -> float | None:
    """The value of a query's single sample, None when it has none."""
    answer = requests.get(url + "/api/v1/query", params={"query": expression}, timeout=5).json()
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_every_component_is_a_target_and_up(prometheus, system):
    _, settings = system
    # kafka, spark_aggregator, registration_api, main_publisher, emoji_api, and per cluster a
    # WebSocket server, a cluster publisher and the subscribers.
    expected = 5 + settings.cluster_count * (2 + settings.subscribers_per_cluster)
    deadline = time.monotonic() + 180
    while not (len(targets(prometheus)) == expected
               and all(t["health"] == "up" for t in targets(prometheus))):
        assert time.monotonic() < deadline, (len(targets(prometheus)), [
            (t["labels"]["component"], t["lastError"]) for t in targets(prometheus)
            if t["health"] != "up"])
        time.sleep(1)
    names = sorted(t["labels"]["component"] for t in targets(prometheus))
    assert names == sorted(["kafka", "spark_aggregator", "registration_api", "main_publisher",
                            "emoji_api"]
                           + [f"ws_server_{n}" for n in settings.clusters]
                           + [f"cluster_publisher_{n}" for n in settings.clusters]
                           + [f"subscriber_{n}_{k}" for n in settings.clusters
                              for k in range(1, settings.subscribers_per_cluster + 1)])


def event(n: int) -> dict:
    return {"user_id": f"prom-{n}", "emoji_type": "🔥",
            "timestamp": format_timestamp(datetime.now(UTC))}


def test_the_accepted_events_counter_moves_by_exactly_the_events_sent(prometheus, system):
    _, settings = system
    api = f"http://{settings.api_host}:{settings.api_port}"
    wait_until(lambda: query(prometheus, ACCEPTED) is not None, 60, 1, "no accepted counter")
    before = query(prometheus, ACCEPTED)
    invalid_before = query(prometheus, REFUSED_INVALID)
    batch = [event(n) for n in range(40)] + [{"user_id": "x", "emoji_type": "nope"}]
    answer = requests.post(api + "/emojis", json=batch, timeout=10)
    assert answer.status_code == 200 and answer.json()["accepted"] == 40, answer.text
    for n in range(7):  # spread over the API's workers
        assert requests.post(api + "/emoji", json=event(100 + n), timeout=10).status_code == 200
    deadline = time.monotonic() + 60
    while query(prometheus, ACCEPTED) != before + 47:
        assert time.monotonic() < deadline, (before, query(prometheus, ACCEPTED))
        time.sleep(0.5)
    time.sleep(5)  # more scrapes: nothing else counted
    assert query(prometheus, ACCEPTED) == before + 47
    assert query(prometheus, REFUSED_INVALID) == invalid_before + 1


def test_status_shows_every_component_up_with_its_metrics_and_lag(prometheus, system):
    env, settings = system
    shown = run_script("status.sh", "--json", env=env, check=False)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    rows = json.loads(shown.stdout)
    assert [r["state"] for r in rows] == ["up"] * len(rows)
    assert {r["metrics_url"] for r in rows} == {
        f"http://{t['labels']['instance']}/metrics" for t in targets(prometheus)}
    consumers = [r for r in rows if r["consumer"]]
    assert len(consumers) == 1 + settings.cluster_count * (1 + settings.subscribers_per_cluster)
    assert all(isinstance(r["lag"], int) and r["lag"] >= 0 for r in consumers), consumers
    table = run_script("status.sh", env=env).stdout.splitlines()
    assert table[0].split() == ["NAME", "HOST", "STATE", "PID", "UP", "RESTARTS", "METRICS",
                                "LAG"]
    assert {r["restarts"] for r in rows} == {0}
    assert len(table) == len(rows) + 1
