"""A whole system of its own on free ports and a folder of its own, for tests and benchmarks.

A demo running on the default ports is left alone: everything started with ``isolated_env``
(scripts/start_all.sh included) uses its own Kafka, APIs, WebSocket servers and VAR_DIR.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

# Below Linux's range of ephemeral ports (32768-60999), so that no outgoing connection takes a
# port between the moment it is chosen here and the moment its server binds it.
PORT_RANGE = (20000, 32767)


def _my_ports(whole: tuple[int, int] = PORT_RANGE) -> tuple[int, int]:
    """This process's share of the range: pytest-xdist's workers (PYTEST_XDIST_WORKER gwN of
    PYTEST_XDIST_WORKER_COUNT) each take ports from a slice of their own, so two workers never
    choose the same port before either has bound it."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get(
        "PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit()):
        return whole
    size = (whole[1] - whole[0] + 1) // int(count)
    first = whole[0] + int(worker[2:]) % int(count) * size
    return first, first + size - 1
_handed_out: set[int] = set()  # a port is free until its server binds it: never give it twice


def free_port() -> int:
    return free_port_run(1)


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free ports (cluster N's WebSocket server listens on
    WS_FIRST_PORT + N - 1)."""
    low, high = _my_ports()
    for _ in range(1000):
        first = random.randint(low, high - count + 1)
        run = range(first, first + count)
        if _handed_out.isdisjoint(run) and all(map(_port_is_free, run)):
            _handed_out.update(run)
            return first
    raise RuntimeError(f"no run of {count} free ports in {low}-{high}")


def isolated_env(var_dir: Path, cluster_count: int = 3) -> dict:
    """Environment variables that give a whole system of its own: data folder, Kafka ports, the
    APIs' and WebSocket servers' ports, and fresh secrets."""
    env = dict(os.environ)
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_HOME", "SUBSCRIBER_KEY", "TOKEN_SECRET"):
        env.pop(name, None)
    env.update({
        "VAR_DIR": str(var_dir),
        "KAFKA_HOST": "localhost",
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_HEAP": "512m",
        "API_PORT": str(free_port()),
        "REGISTRATION_PORT": str(free_port()),
        "WS_FIRST_PORT": str(free_port_run(cluster_count)),
        "WS_PUBLISH_FIRST_PORT": str(free_port_run(cluster_count)),
        "CLUSTER_COUNT": str(cluster_count),
        # The Kafka-only processes' metrics ports (2 subscribers a cluster), up to 3 brokers'
        # JMX exporters, Spark's UI.
        "METRICS_FIRST_PORT": str(free_port_run(2 + 3 * cluster_count)),
        "KAFKA_METRICS_PORT": str(free_port_run(3)),
        "SPARK_UI_PORT": str(free_port()),
        "SPARK_DRIVER_MEMORY": "1g",
    })
    return env
