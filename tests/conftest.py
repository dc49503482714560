"""Fixtures that start real services for the tests, on their own ports and data folder.

The Kafka broker of the test run listens on free ports chosen at start and keeps its data in a
temporary folder, so a demo running on the default ports is left alone. Every service started
here is stopped afterwards by its pid, even when a test fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from emojistream import config

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(script: str, *args: str, env: dict, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO_ROOT / "scripts" / script), *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, check=check)


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free ports (cluster N's WebSocket server listens on
    WS_BASE_PORT + N)."""
    for _ in range(100):
        first = free_port()
        if all(_port_is_free(first + i) for i in range(1, count)):
            return first
    raise RuntimeError(f"no run of {count} free ports found")


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def isolated_env(var_dir: Path, cluster_count: int = 3) -> dict:
    """Environment variables that give a whole system of its own: data folder, Kafka ports, the
    APIs' and WebSocket servers' ports, and a fresh subscriber key."""
    env = dict(os.environ)
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_HOME", "SUBSCRIBER_KEY"):
        env.pop(name, None)
    env.update({
        "VAR_DIR": str(var_dir),
        "KAFKA_HOST": "localhost",
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_HEAP": "512m",
        "API_PORT": str(free_port()),
        "REGISTRATION_PORT": str(free_port()),
        "WS_BASE_PORT": str(free_port_run(cluster_count + 1)),
        "CLUSTER_COUNT": str(cluster_count),
        "SPARK_SHUFFLE_PARTITIONS": "2",
        "SPARK_DRIVER_MEMORY": "1g",
    })
    return env


@pytest.fixture(scope="session")
def test_env(tmp_path_factory) -> dict:
    """Environment variables that point every component at the test run's own services."""
    return isolated_env(tmp_path_factory.mktemp("var"))


@pytest.fixture(scope="session")
def kafka(test_env) -> config.Settings:
    """A real single-node KRaft broker for the whole test session."""
    started = run_script("kafka.sh", "start", env=test_env, check=False)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield config.load(test_env)
    finally:
        run_script("kafka.sh", "stop", env=test_env, check=False)


@pytest.fixture
def topic_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"
