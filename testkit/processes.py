"""Components started as real processes, waited for, and stopped by their pid.

    with running(log_dir, "ws_server_1", "ws_server.py", "--cluster", "1", env=env) as server:
        wait_for_health("http://localhost:5002/health", server)

Every process is stopped on the way out (SIGTERM, then SIGKILL), also when the caller fails.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class Service:
    """A top-level script of the repository running as a subprocess of this Python; its stderr
    (the log) goes to LOG_DIR/NAME.log."""

    def __init__(self, log_dir: Path, name: str, script: str, *args: str, env: dict,
                 stdout=subprocess.DEVNULL):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        with open(self.log_path, "w") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO_ROOT / script), *args], env=env, cwd=REPO_ROOT,
                stdout=stdout, stderr=log_file, text=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout_s: float = 30, count: int = 1) -> None:
        """Wait until ``text`` appears ``count`` times in the log; fail if the process exits."""
        deadline = time.monotonic() + timeout_s
        while self.log().count(text) < count:
            if not self.running():
                raise ServiceFailed(f"{self.name} exited:\n{self.log()}")
            if time.monotonic() > deadline:
                raise ServiceFailed(f"{self.name} did not log {text!r} within {timeout_s} s:\n"
                                    f"{self.log()}")
            time.sleep(0.1)

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, then the exit status (SIGKILL if it does not exit in time)."""
        if self.running():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL, unless it has exited already (then its pid may be another process's)."""
        if self.running():
            self.process.kill()
        self.process.wait()


def stop_all(services: list[Service], timeout_s: float = 30) -> None:
    """SIGTERM to every service at once, then wait for each (SIGKILL when it takes too long)."""
    for service in services:
        if service.running():
            service.process.send_signal(signal.SIGTERM)
    for service in services:
        try:
            service.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            service.kill()


class ServiceFailed(AssertionError):
    """A service exited, or did not become ready in time; the message has its log."""


@contextmanager
def running(log_dir: Path, name: str, script: str, *args: str, env: dict, **options):
    """A started Service, killed on the way out if it still runs (also when the caller fails)."""
    service = Service(log_dir, name, script, *args, env=env, **options)
    try:
        yield service
    finally:
        service.kill()


def get_json(url: str, timeout_s: float = 2):
    """(status, parsed body) of a GET; the body as text when an error status is not JSON."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for_health(url: str, *services: Service, timeout_s: float = 30):
    """The answer of ``url`` once it is 200; ServiceFailed if one of ``services`` exits first or
    the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        for service in services:
            if not service.running():
                raise ServiceFailed(f"{service.name} exited:\n{service.log()}")
        try:
            status, body = get_json(url)
            if status == 200:
                return body
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ServiceFailed(f"{url} did not answer 200 within {timeout_s} s")
        time.sleep(0.1)


def component_status(env: dict) -> dict[str, dict]:
    """Each component's row of scripts/status.sh --json (state, pid, restarts, ...), by name,
    for the system of ``env`` (its VAR_DIR's supervisord)."""
    answer = subprocess.run([sys.executable, "-m", "emojistream.ops.system", "status", "--json"],
                            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    return {row["name"]: row for row in json.loads(answer.stdout)}


def component_pid(env: dict, name: str) -> int:
    """The pid of a running component of the system of ``env``."""
    pid = component_status(env)[name]["pid"]
    assert pid, f"{name} does not run"
    return pid


SUPERVISOR_RUNS = ("from emojistream.ops.system import plan; "
                   "from emojistream.ops.supervise import Supervisor; "
                   "settings, _, every = plan(None); print(Supervisor(settings, every).running())")


def supervisor_runs(env: dict) -> bool:
    """Whether the supervisord of ``env``'s VAR_DIR answers."""
    answer = subprocess.run([sys.executable, "-c", SUPERVISOR_RUNS], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    return answer.stdout.strip() == "True"
