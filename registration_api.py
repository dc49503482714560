"""Registration of viewers: assigns each one a cluster and the WebSocket endpoint to connect to.

    POST /register   {"client_id": "client_1"}  ->  {"status": "success", "cluster_id": "cluster2",
                     "subscriber_endpoint": "ws://localhost:5003/?client_id=client_1"}
                     A client registered already gets its existing assignment again.
    POST /deregister {"client_id": "client_1"}  ->  {"status": "success"}, or 404
    GET  /clusters   each cluster's id, endpoint and number of registered viewers
    GET  /health     {"status": "ok", ...}

A new viewer goes to the least loaded cluster, ties broken round-robin. The load measure is
pluggable (Registry's ``load``); by default it is the number of viewers registered there.

The registry lives in memory, so the API is served by gunicorn with ONE worker process (with
several threads): a second worker would keep a second, different registry. The registry does not
survive a restart; viewers whose connection drops register again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import threading
from typing import Callable
from urllib.parse import quote

from flask import Flask, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from emojistream import config, wsgi
# A client_id follows the rules of an event's user_id (it is sent as one).
from emojistream.events import MAX_USER_ID_LENGTH, _has_control_characters
from emojistream.logs import setup_logging

log = logging.getLogger("registration_api")

REGISTRY = "registry"  # key of the registry in app.extensions
ENDPOINTS = "POST /register, POST /deregister, GET /clusters and GET /health"


class ApiError(Exception):
    """An answer other than success: its status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Registry:
    """Which cluster each viewer is assigned to; thread-safe.

    ``load(cluster)`` measures how busy a cluster is (default: the viewers registered there).
    It is called with the registry's lock held, once per cluster for each new registration.
    """

    def __init__(self, clusters, load: Callable[[int], int] | None = None):
        self.clusters = list(clusters)
        self._load = load or self.registered_count
        self._assigned: dict[str, int] = {}
        self._counts = {n: 0 for n in self.clusters}
        self._next = 0  # index in self.clusters where the round-robin tie-break starts
        self._lock = threading.RLock()

    def register(self, client_id: str) -> tuple[int, bool]:
        """The client's cluster, and whether it is a new registration."""
        with self._lock:
            if client_id in self._assigned:
                return self._assigned[client_id], False
            cluster = self._least_loaded()
            self._assigned[client_id] = cluster
            self._counts[cluster] += 1
            return cluster, True

    def deregister(self, client_id: str) -> int | None:
        """The cluster the client was assigned to, or None if it was not registered."""
        with self._lock:
            cluster = self._assigned.pop(client_id, None)
            if cluster is not None:
                self._counts[cluster] -= 1
            return cluster

    def registered_count(self, cluster: int) -> int:
        with self._lock:
            return self._counts[cluster]

    def total(self) -> int:
        with self._lock:
            return len(self._assigned)

    def _least_loaded(self) -> int:
        """The first cluster, from the round-robin position on, with the lowest load."""
        count = len(self.clusters)
        order = [self.clusters[(self._next + i) % count] for i in range(count)]
        loads = {n: self._load(n) for n in order}
        chosen = min(order, key=loads.__getitem__)  # min keeps the first of equals
        self._next = (self.clusters.index(chosen) + 1) % count
        return chosen


def cluster_id(cluster: int) -> str:
    return f"cluster{cluster}"


def endpoint_for(settings: config.Settings, cluster: int, client_id: str) -> str:
    base = settings.ws_public_url(cluster)
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}client_id={quote(client_id, safe='')}"


def check_client_id(body) -> str:
    """The client_id of a request body; ApiError(400) naming the problem."""
    if not isinstance(body, dict):
        raise ApiError(400, 'body must be a JSON object like {"client_id": "..."}')
    if "client_id" not in body:
        raise ApiError(400, "missing field: client_id")
    client_id = body["client_id"]
    if not isinstance(client_id, str):
        raise ApiError(400, f"client_id must be a string, got {_json_type(client_id)}")
    if not client_id.strip():
        raise ApiError(400, "client_id must not be empty")
    if len(client_id) > MAX_USER_ID_LENGTH:
        raise ApiError(400, f"client_id is longer than {MAX_USER_ID_LENGTH} characters")
    if _has_control_characters(client_id):
        raise ApiError(400, "client_id must not contain control characters")
    return client_id


def _json_type(value) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _json_body():
    """The parsed body, whatever its Content-Type says."""
    try:
        return json.loads(request.get_data(cache=False), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "body is not valid JSON") from None


def create_app(settings: config.Settings | None = None, registry: Registry | None = None) -> Flask:
    """The registration app; ``registry`` defaults to an empty one over the settings' clusters."""
    settings = settings or config.load()
    app = Flask(__name__)
    app.extensions[REGISTRY] = registry if registry is not None else Registry(settings.clusters)
    _add_routes(app, settings, app.extensions[REGISTRY])
    _add_error_handlers(app)
    return app


def _add_routes(app: Flask, settings: config.Settings, registry: Registry) -> None:
    @app.post("/register")
    def register():
        client_id = check_client_id(_json_body())
        cluster, new = registry.register(client_id)
        if new:
            log.info("registered %r on %s", client_id, cluster_id(cluster))
        return {"status": "success", "cluster_id": cluster_id(cluster),
                "subscriber_endpoint": endpoint_for(settings, cluster, client_id)}

    @app.post("/deregister")
    def deregister():
        client_id = check_client_id(_json_body())
        cluster = registry.deregister(client_id)
        if cluster is None:
            raise ApiError(404, f"client_id {client_id!r} is not registered")
        log.info("deregistered %r from %s", client_id, cluster_id(cluster))
        return {"status": "success"}

    @app.get("/clusters")
    def clusters():
        return [{"cluster_id": cluster_id(n), "endpoint": settings.ws_public_url(n),
                 "registered_viewers": registry.registered_count(n)}
                for n in registry.clusters]

    @app.get("/health")
    def health():
        return {"status": "ok", "registered_viewers": registry.total()}


def _json_error(status: int, message: str, headers=None):
    return {"error": message}, status, headers or {}


def _add_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(err: ApiError):
        return _json_error(err.status, str(err))

    @app.errorhandler(NotFound)
    def not_found(_err):
        return _json_error(404, f"no such endpoint: {request.path} (there are {ENDPOINTS})")

    @app.errorhandler(MethodNotAllowed)
    def wrong_method(err: MethodNotAllowed):
        allowed = ", ".join(sorted(err.valid_methods or ()))
        return _json_error(405, f"{request.method} is not allowed on {request.path}; "
                                f"use {allowed}", {"Allow": allowed})

    @app.errorhandler(HTTPException)
    def other_http_error(err: HTTPException):
        return _json_error(err.code or 500, err.description or err.name)

    @app.errorhandler(Exception)
    def internal_error(_err):
        log.exception("request %s %s failed", request.method, request.path)
        return _json_error(500, "internal error")


def parse_args(argv, settings: config.Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="registration_api.py",
        description="Assigns viewers to clusters (POST /register, POST /deregister, "
                    "GET /clusters, GET /health). One gunicorn worker: the registry is in "
                    "memory. Options override REGISTRATION_HOST, REGISTRATION_PORT and "
                    "REGISTRATION_THREADS.")
    parser.add_argument("--host", default=settings.registration_host,
                        help=f"address to listen on (default {settings.registration_host})")
    parser.add_argument("--port", type=int, default=settings.registration_port,
                        help=f"port to listen on (default {settings.registration_port})")
    parser.add_argument("--threads", type=int, default=settings.registration_threads,
                        help=f"threads of the one worker (default "
                             f"{settings.registration_threads})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    setup_logging("registration_api")
    try:
        settings = config.load()
    except config.ConfigError as err:
        log.error("%s", err)
        return 2
    args = parse_args(argv, settings)
    settings = dataclasses.replace(settings, registration_host=args.host,
                                   registration_port=args.port,
                                   registration_threads=args.threads)
    try:
        wsgi.check_port_free(settings.registration_host, settings.registration_port)
        log.info("listening on %s:%d (1 worker with %d threads), %d cluster(s): %s",
                 settings.registration_host, settings.registration_port,
                 settings.registration_threads, settings.cluster_count,
                 ", ".join(settings.ws_public_url(n) for n in settings.clusters))
        wsgi.serve(lambda: create_app(settings), name="registration_api",
                   host=settings.registration_host, port=settings.registration_port,
                   workers=1, threads=settings.registration_threads)
    except wsgi.PortInUse as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
