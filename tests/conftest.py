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
from testkit.processes import supervisor_runs
from testkit.sandbox import isolated_env
from tests.services import API_HOST, OTHER_STREAM, PAGE_HOST, run_script

HEAVY_MARKERS = {"kafka", "spark", "stack", "browser"}
WHOLE_SYSTEM_START_ATTEMPTS = 2


def pytest_collection_modifyitems(items):
    for item in items:
        if "kafka" in item.fixturenames and not HEAVY_MARKERS & {
                mark.name for mark in item.iter_markers()}:
            raise pytest.UsageError(f"{item.nodeid} uses the kafka fixture without a "
                                    "kafka, spark or stack marker")
    # The tests sharing whole_system run last, together: the system is stopped with the
    # session, so no other test runs beside it.
    items[:] = ([i for i in items if "whole_system" not in i.fixturenames]
                + [i for i in items if "whole_system" in i.fixturenames])


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


@pytest.fixture(scope="session")
def whole_system(tmp_path_factory):
    """The whole system as scripts/start_all.sh starts it, on its own Kafka and ports, shared
    by the modules that only watch it (test_pipeline, test_prometheus, test_web_page): its
    environment and settings. Two streams; one registration worker, so one balancer spreads
    the first viewers one per cluster; browsers reach the ingest API under another host name,
    and the page's origin is another still.

    The free ports of isolated_env are free when chosen, but on a busy machine one of them may
    be taken (as the local port of some connection) before its server binds it: then the
    system is stopped and started once more on other ports."""
    failures = []
    for _attempt in range(WHOLE_SYSTEM_START_ATTEMPTS):
        env = isolated_env(tmp_path_factory.mktemp("whole-system"))
        env["STREAMS"] = f"main,{OTHER_STREAM}"
        env["REGISTRATION_WORKERS"] = "1"
        env["API_PUBLIC_URL"] = f"http://{API_HOST}:{env['API_PORT']}"
        env["REGISTRATION_PUBLIC_URL"] = f"http://{PAGE_HOST}:{env['REGISTRATION_PORT']}"
        env["READY_TIMEOUT"] = "300"  # Spark takes minutes on a busy 2-core machine
        try:
            started = run_script("start_all.sh", env=env, timeout=400, check=False)
            if started.returncode == 0:
                yield env, config.load(env)
                return
            failures.append(started.stdout + started.stderr)
        finally:
            stopped = run_script("stop_all.sh", env=env, timeout=300, check=False)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            assert not supervisor_runs(env)
    pytest.fail("scripts/start_all.sh failed:\n" + "\n".join(failures))
