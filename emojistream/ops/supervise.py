"""One supervisord per host (per VAR_DIR) runs that host's components of the table
(components.py): it restarts a component that dies, with a growing delay while it keeps dying at
start, and rotates each component's log by size. The scripts start, stop and show them through
it (docs/operations.md#processes); nothing here signals a process itself.

    python -m emojistream.ops.supervise up [NAME...] [--host HOST]   start, wait until ready
    python -m emojistream.ops.supervise down [NAME...]                stop (all: and supervisord)
    python -m emojistream.ops.supervise status [--json]               the table of status.sh
"""

from __future__ import annotations

import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

from emojistream.common.settings import REPO_ROOT
from emojistream.config import Settings
from emojistream.ops import conf
from emojistream.ops.components import Component
from emojistream.ops.readiness import is_ready

RUNNING, STARTING, BACKOFF = "RUNNING", "STARTING", "BACKOFF"
GAVE_UP = ("FATAL", "EXITED")
SUPERVISORD_START_TIMEOUT_S = 20.0


class SupervisorError(RuntimeError):
    """supervisord could not start, or a component not get ready; the message says which."""


class Supervisor:
    """The supervisord of one VAR_DIR, and the components it runs."""

    def __init__(self, settings: Settings, components: list[Component]):
        self.settings = settings
        self.components = components
        self.dir = settings.var_path / "supervisor"
        self.conf = self.dir / "supervisord.conf"
        self.socket = conf.socket_path(self.dir)

    def rpc(self):
        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def running(self) -> bool:
        try:
            return self.rpc().getState()["statename"] == RUNNING
        except (OSError, xmlrpc.client.Error):
            return False

    def ensure(self, starting: list[Component]) -> None:
        """supervisord runs with the current configuration of this host's components: started
        if need be, else told of a changed configuration for the components about to start
        that do not run (one that runs keeps its settings until it is stopped and started)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.settings.var_path / "logs").mkdir(parents=True, exist_ok=True)
        text = conf.render(self.settings, self.components, self.dir)
        changed = not self.conf.exists() or self.conf.read_text() != text
        if changed:
            self.conf.write_text(text)
            self.conf.chmod(0o600)  # it may hold secrets given in the environment
        if not self.running():
            subprocess.run([_bin("supervisord"), "-c", str(self.conf)], check=True,
                           cwd=REPO_ROOT)
            deadline = time.monotonic() + SUPERVISORD_START_TIMEOUT_S
            while not self.running():
                if time.monotonic() > deadline:
                    raise SupervisorError(f"supervisord did not answer at {self.socket}; see "
                                          f"{self.settings.var_path / 'logs' / 'supervisord.log'}")
                time.sleep(0.1)
        elif changed:
            self.ctl("reread")
            info = self.info()
            idle = [c.name for c in starting
                    if info.get(c.name, {}).get("statename") not in (RUNNING, STARTING)]
            if idle:
                self.ctl("update", *idle)

    def ctl(self, *args: str) -> str:
        answer = subprocess.run([_bin("supervisorctl"), "-c", str(self.conf), *args],
                                capture_output=True, text=True, cwd=REPO_ROOT)
        return answer.stdout + answer.stderr

    def info(self) -> dict[str, dict]:
        """Each program's process info (supervisord's getAllProcessInfo), by name."""
        try:
            return {p["name"]: p for p in self.rpc().getAllProcessInfo()}
        except (OSError, xmlrpc.client.Error):
            return {}

    def start(self, components: list[Component], timeout_s: float,
              say=lambda *args: None) -> None:
        """Start the components in order, each order's together, and wait until each is
        ready; SupervisorError naming the one that is not (with the end of its log)."""
        for batch in _by_order(components):
            for component in batch:
                if self.info().get(component.name, {}).get("statename") in (RUNNING, STARTING,
                                                                              BACKOFF):
                    continue
                self.rpc().startProcess(component.name, False)
            for component in batch:
                self._wait_ready(component, timeout_s)
                say("%s is ready", component.name)

    def _wait_ready(self, component: Component, timeout_s: float) -> None:
        """Until it is ready and supervisord counts it as started (RUNNING: up for START_SECONDS);
        SupervisorError when supervisord gave up on it or the time is out."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.info().get(component.name, {}).get("statename")
            if state == RUNNING and is_ready(component.ready):
                return
            if state in GAVE_UP or time.monotonic() > deadline:
                why = "gave up" if state in GAVE_UP else f"is not ready after {timeout_s:.0f} s"
                raise SupervisorError(f"{component.name} {why} ({state}); the end of "
                                      f"{self.log(component.name)}:\n"
                                      f"{self.tail(component.name)}")
            time.sleep(0.5)

    def stop(self, components: list[Component]) -> None:
        """Stop the components, the latest to start first, each order's together."""
        for batch in reversed(_by_order(components)):
            names = [c.name for c in batch
                     if self.info().get(c.name, {}).get("statename") in (RUNNING, STARTING,
                                                                           BACKOFF)]
            for name in names:
                self.rpc().stopProcess(name, False)
            while any(self.info().get(n, {}).get("statename") not in
                      ("STOPPED", "EXITED", "FATAL", None) for n in names):
                time.sleep(0.2)

    def shutdown(self) -> None:
        """Stop supervisord (and with it whatever still runs), and wait until it is gone."""
        try:
            self.rpc().shutdown()
        except (OSError, xmlrpc.client.Error):
            return  # it was not running, or is shutting down already
        while True:
            try:
                self.rpc().getState()
            except xmlrpc.client.Fault:
                pass  # shutting down
            except OSError:
                return
            time.sleep(0.2)

    def log(self, name: str) -> Path:
        return self.settings.var_path / "logs" / f"{name}.log"

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _by_order(components: list[Component]) -> list[list[Component]]:
    batches: dict[int, list[Component]] = {}
    for component in components:
        batches.setdefault(component.order, []).append(component)
    return [batches[order] for order in sorted(batches)]


def _bin(name: str) -> str:
    """supervisord's and supervisorctl's scripts, beside this Python."""
    return str(Path(sys.executable).parent / name)
