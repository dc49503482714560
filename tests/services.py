"""Components started as real processes by the tests, each stopped by its pid afterwards."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import REPO_ROOT

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)"
                      r" +[\w.]+: ")


class Service:
    """A top-level script running as a subprocess; stderr (the log) goes to a file."""

    def __init__(self, log_dir: Path, name: str, script: str, *args: str, env: dict,
                 stdout=subprocess.DEVNULL):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "w") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO_ROOT / script), *args], env=env, cwd=REPO_ROOT,
                stdout=stdout, stderr=log_file, text=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout_s: float = 30, count: int = 1) -> None:
        """Wait until ``text`` appears ``count`` times in the log; fail if the process exits."""
        deadline = time.monotonic() + timeout_s
        while self.log().count(text) < count:
            assert self.process.poll() is None, f"{self.name} exited:\n{self.log()}"
            assert time.monotonic() < deadline, \
                f"{self.name} did not log {text!r} within {timeout_s} s:\n{self.log()}"
            time.sleep(0.1)

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, then the exit status (SIGKILL if it does not exit in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@contextmanager
def running(log_dir: Path, name: str, script: str, *args: str, env: dict, **options):
    """A started Service, killed on the way out if it still runs (also when a test fails)."""
    service = Service(log_dir, name, script, *args, env=env, **options)
    try:
        yield service
    finally:
        service.kill()


def run(script: str, *args: str, env: dict, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)


def get_json(url: str, timeout_s: float = 2):
    """(status, parsed body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for_health(url: str, service: Service, timeout_s: float = 30):
    """The health answer once it is 200; fails if the service exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert service.process.poll() is None, f"{service.name} exited:\n{service.log()}"
        try:
            status, body = get_json(url)
            if status == 200:
                return body
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer within {timeout_s} s"
        time.sleep(0.1)


def wait_until(condition, timeout_s: float = 15, interval_s: float = 0.1, message: str = ""):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message or "condition not met in time"
        time.sleep(interval_s)


def assert_clean_log(text: str) -> None:
    """Only log lines in the project's format, and no traceback."""
    assert "Traceback" not in text, text
    assert all(LOG_LINE.match(line) for line in text.splitlines()), text
