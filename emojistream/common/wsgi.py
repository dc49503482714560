"""The HTTP server of the project's Flask apps: granian (its WSGI mode), run from inside a script,
configured from the settings rather than its command line, its log lines in the project's format.

    serve("emoji_api:worker_app", host=..., port=..., workers=2, threads=8,
          worker_exit="emoji_api:close_sink")

Chosen by measurement over gunicorn and uWSGI for the ingest API (docs/benchmarks.md: about twice
gunicorn's single POSTs per second on this machine). The app factory runs in each worker process
after the fork, so whatever it creates (a Kafka producer, an in-memory registry) belongs to that
worker alone; it reads its settings from the environment, which the workers inherit.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import signal
import socket
import threading
import time
from functools import partial

from granian import Granian
from granian.constants import Interfaces
from granian.log import LogLevels

from emojistream.common.logs import FORMAT

# How often a worker checks that its parent (granian's main process) lives, and how long an
# orphaned worker has to stop gracefully.
PARENT_CHECK_S = 1.0
ORPHAN_GRACE_S = 10.0

LOG_CONFIG = {
    "formatters": {"generic": {"()": "logging.Formatter", "fmt": FORMAT}},
    "handlers": {"console": {"formatter": "generic", "class": "logging.StreamHandler",
                             "stream": "ext://sys.stderr"}},
    "loggers": {"_granian": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}


class PortInUse(RuntimeError):
    """Another process already listens on the address."""


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUse when something listens on host:port already, in one clear line."""
    for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise PortInUse(f"port {port} on {host} is already in use") from None
                if err.errno != errno.EADDRNOTAVAIL:  # e.g. no IPv6 on this machine
                    raise


def bind_address(host: str, port: int) -> str:
    """The IP address to listen on for ``host`` (granian takes addresses, not names)."""
    family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
    return str(address[0])


def serve(factory: str, *, host: str, port: int, workers: int, threads: int,
          worker_exit: str | None = None) -> None:
    """Serve the WSGI app that ``factory`` ("module:function", called without arguments in
    each worker) makes, until SIGTERM or SIGINT (a graceful stop). ``worker_exit``
    ("module:function") is called with a worker's app as that worker ends. Raises PortInUse."""
    check_port_free(host, port)
    level = os.environ.get("LOG_LEVEL", "info").lower()
    server = Granian(factory, address=bind_address(host, port), port=port,
                     interface=Interfaces.WSGI, factory=True, workers=workers,
                     blocking_threads=threads,
                     log_level=LogLevels(level if level in LogLevels.__members__ else "info"),
                     log_dictconfig=LOG_CONFIG, log_access=False)
    server.serve(target_loader=partial(_load_app, worker_exit))


def _load_app(worker_exit: str | None, factory: str):
    """In a worker, as granian loads its app: the app, a watch that stops the worker when its
    parent dies, and ``worker_exit`` run as the worker ends.

    A forked worker inherits the main process's SIGTERM handler until granian sets its own as
    the worker starts serving, so a stop that comes while the worker loads would be swallowed
    and the main process would wait for that worker forever. Until then, the worker has served
    nothing: such a signal ends it at once."""
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _exit_before_serving)
    app = _call(factory)
    threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), daemon=True,
                     name="parent-watch").start()
    if worker_exit:
        threading.Thread(target=_after_serving, args=(worker_exit, app),
                         name="worker-exit").start()
    return app


def _exit_before_serving(signum, _frame) -> None:
    os._exit(128 + signum)


def _after_serving(worker_exit: str, app) -> None:
    """Call ``worker_exit`` once the worker's main thread is done serving. A thread that is not
    a daemon: Python waits for it before the worker process exits."""
    threading.main_thread().join()
    _call(worker_exit, app)


def _stop_when_orphaned(parent_pid: int) -> None:
    """Stop this worker (as SIGTERM would) once its parent is gone.

    Granian's workers outlive a main process killed with SIGKILL (or by a crash) and would go
    on answering on the shared port: nothing then stops them, and a new start finds the port in
    use. If the graceful stop has not ended the worker within ORPHAN_GRACE_S, it exits."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    logging.getLogger(__name__).warning("the server's main process %d is gone; stopping "
                                        "worker %d", parent_pid, os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


def _call(path: str, *args):
    module, _, function = path.partition(":")
    return getattr(importlib.import_module(module), function)(*args)
