"""supervisord's configuration for one host's components (supervise.py), written from the
components' table and the settings: every setting reaches every component through its program's
environment, so a changed setting restarts exactly the components it concerns."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

from emojistream.common.settings import REPO_ROOT, to_environment
from emojistream.config import Settings
from emojistream.ops.components import Component

# A component that exits within this many seconds of its start failed to start: supervisord
# tries again after 1 s, then 2 s, ... (its backoff), this many times before it gives up.
START_SECONDS = 3
START_RETRIES = 100
STOP_WAIT_SECONDS = {"kafka": 40, "spark_aggregator": 30}
STOP_WAIT_DEFAULT_S = 20
UNIX_PATH_MAX = 108  # sockaddr_un.sun_path, with the terminating NUL
# Passed on from the environment of the command that (re)configures supervisord.
PASSED_ON = ("PATH", "HOME", "JAVA_HOME", "LOG_LEVEL", "TMPDIR", "LANG")


def socket_path(run_dir: Path) -> Path:
    """supervisord's control socket: in ``run_dir``, unless that path is too long for a Unix
    socket (108 bytes with its NUL), as under a deep VAR_DIR; then a short one in the temporary
    folder, named after ``run_dir``."""
    in_run_dir = run_dir / "supervisor.sock"
    if len(os.fsencode(in_run_dir)) < UNIX_PATH_MAX:
        return in_run_dir
    digest = hashlib.sha256(os.fsencode(run_dir.resolve())).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"emojistream-supervisor-{digest}.sock"


def render(settings: Settings, components: list[Component], run_dir: Path) -> str:
    logs = settings.var_path / "logs"
    socket = socket_path(run_dir)
    sections = [
        "; Written by emojistream.ops.supervise from the settings and the topology: edit those.",
        "[supervisord]",
        f"logfile={logs / 'supervisord.log'}",
        f"logfile_maxbytes={settings.log_max_bytes}",
        f"logfile_backups={settings.log_backups}",
        f"pidfile={run_dir / 'supervisord.pid'}",
        f"childlogdir={logs}",
        f"directory={REPO_ROOT}",
        "",
        "[unix_http_server]",
        f"file={socket}",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{socket}",
        "",
        "[eventlistener:crashes]",
        f"command={sys.executable} -m emojistream.ops.crashes {run_dir / 'crashes.json'}",
        "events=PROCESS_STATE_EXITED",
        "stopwaitsecs=2",
        f"stderr_logfile={logs / 'crashes.log'}",
        f"stderr_logfile_maxbytes={settings.log_max_bytes}",
        "",
    ]
    environment = _environment(settings)
    for component in components:
        sections += _program(component, settings, environment, logs)
    return "\n".join(sections)


def _program(component: Component, settings: Settings, environment: str,
             logs: Path) -> list[str]:
    program, *args = component.command
    command = ([sys.executable, str(REPO_ROOT / program)] if program.endswith(".py")
               else [str(REPO_ROOT / program)])
    return [
        f"[program:{component.name}]",
        "command=" + " ".join(_escape(part) for part in [*command, *args]),
        f"directory={REPO_ROOT}",
        f"environment={environment}",
        f"priority={component.order}",
        "autostart=false",
        "autorestart=true",
        f"startsecs={START_SECONDS}",
        f"startretries={START_RETRIES}",
        "stopsignal=TERM",
        f"stopwaitsecs={STOP_WAIT_SECONDS.get(component.kind, STOP_WAIT_DEFAULT_S)}",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={logs / (component.name + '.log')}",
        f"stdout_logfile_maxbytes={settings.log_max_bytes}",
        f"stdout_logfile_backups={settings.log_backups}",
        "",
    ]


def _environment(settings: Settings) -> str:
    import os
    values = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
    values.update(to_environment(settings))
    values["PYTHONUNBUFFERED"] = "1"
    return ",".join(f"{name}={_quoted(value)}" for name, value in values.items())


def _quoted(value: str) -> str:
    """A value for supervisord's KEY="value" lists (its % is interpolation)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _escape(part: str) -> str:
    return part.replace("%", "%%")
