"""Fixtures that start real services for the tests, on their own ports and data folder.

The Kafka broker of the test run listens on free ports chosen at start and keeps its data in a
temporary folder, so a demo running on the default ports is left alone. Every service started
here is stopped afterwards by its pid, even when a test fails.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from emojistream import config
from emojistream.sandbox import free_port, free_port_run, isolated_env  # noqa: F401 (for tests)

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_script(script: str, *args: str, env: dict, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO_ROOT / "scripts" / script), *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, check=check)


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
