"""Fixtures that start real services for the tests, on their own ports and data folder.

The Kafka broker of the test run listens on free ports chosen at start and keeps its data in a
temporary folder, so a demo running on the default ports is left alone. Every service started
here is stopped afterwards by its pid, even when a test fails.

A test that uses the ``kafka`` fixture must carry the ``kafka`` (or ``stack``) marker, so that
``scripts/test.sh --fast`` never starts a JVM.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest

from emojistream import config
from testkit.sandbox import isolated_env
from tests.services import run_script

HEAVY_MARKERS = {"kafka", "spark", "stack", "browser"}


def pytest_collection_modifyitems(items):
    for item in items:
        if "kafka" in item.fixturenames and not HEAVY_MARKERS & {
                mark.name for mark in item.iter_markers()}:
            raise pytest.UsageError(f"{item.nodeid} uses the kafka fixture without a "
                                    "kafka, spark or stack marker")


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
def unrelated_process():
    """A process the scripts did not start, for pid files to name: `sleep 600` in a session of
    its own, so that its process group is its pid too. Killed at the end if it still runs: it is
    this test's child, so until it is reaped its pid cannot be another process's."""
    process = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture
def topic_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"
