"""gunicorn, run from inside a script and configured from the settings rather than its command
line, with its log lines in the project's format. Used by the HTTP APIs:

    serve(lambda: create_app(settings), name="emoji_api", host=..., port=..., workers=2,
          threads=8)

The app factory runs in each worker after the fork, so whatever it creates (a Kafka producer, an
in-memory registry) belongs to that worker alone.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from . import urls
from .logs import FORMAT


class PortInUse(RuntimeError):
    """Another process already listens on the address."""


class GunicornLogger(glogging.Logger):
    """gunicorn's own log lines in the project's format."""

    error_fmt = FORMAT
    datefmt = None


def gunicorn_options(*, name: str, host: str, port: int, workers: int, threads: int,
                     worker_exit: Callable | None = None) -> dict:
    options = {
        "bind": urls.host_port(host, port),
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": os.environ.get("LOG_LEVEL", "info").lower(),
        "logger_class": GunicornLogger,
        "proc_name": name,
        # gunicorn's control socket defaults to one path per user, shared by every instance.
        "control_socket_disable": True,
    }
    if worker_exit is not None:
        options["worker_exit"] = worker_exit
    return options


class _Server(BaseApplication):
    def __init__(self, app_factory: Callable, options: dict):
        self.app_factory = app_factory
        self.options = options
        super().__init__(prog=options["proc_name"])

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return self.app_factory()


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUse when something listens on host:port already.

    gunicorn would retry for five seconds and then log several lines; this says it in one.
    """
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


def serve(app_factory: Callable, *, name: str, host: str, port: int, workers: int, threads: int,
          worker_exit: Callable | None = None) -> None:
    """Serve the WSGI app made by ``app_factory()`` (called in each worker) until gunicorn is
    told to stop (SIGTERM, SIGINT: graceful). ``worker_exit(arbiter, worker)`` is gunicorn's
    hook run as a worker exits; ``worker.wsgi`` is its app. Raises PortInUse."""
    check_port_free(host, port)
    options = gunicorn_options(name=name, host=host, port=port, workers=workers, threads=threads,
                               worker_exit=worker_exit)
    _Server(app_factory, options).run()
