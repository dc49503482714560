"""Registration of viewers: assigns each one a cluster, a WebSocket endpoint and a token.

    POST /register   {"client_id": "client_1"}  ->  {"status": "success", "cluster_id": "cluster2",
                     "subscriber_endpoint": "ws://localhost:5003/?token=eyJ..."}
                     A client registered already keeps its cluster while that cluster's server
                     is up (with a fresh token); when it is down, the client is moved to another.
                     503 {"error": "no cluster is available ..."} while every server is down.
    POST /deregister {"client_id": "client_1"}  ->  {"status": "success"}, or 404
    GET  /clusters   [{"cluster_id", "endpoint", "healthy", "live_connections",
                     "registered_viewers"}, ...]
    GET  /health     {"status": "ok", "registered_viewers": N}
    GET  /           the viewers' web page (emojistream/web.py, static/)

Balancing. A background thread polls every cluster's WebSocket server's GET /health every
WS_HEALTH_POLL_S (all clusters in parallel, in one round; timeout WS_HEALTH_TIMEOUT_S). A server
that answers is healthy and reports its live viewer count; one that does not is down and is
assigned no one. The load of a cluster is its last reported live count plus the viewers
assigned to it since that round started (they may not have connected yet), so a burst of
registrations before anyone connects is spread evenly too; a round's reports are applied
together, so the loads of all clusters are measured at the same moment. A new viewer goes to
the healthy cluster with the lowest load, ties broken round-robin. When a registered client
registers again (its connection dropped), its cluster's server is polled at once (unless it was
polled in the last RECHECK_S), so a viewer whose server died is moved without waiting for the
next poll.

Tokens. The endpoint carries a token (emojistream/tokens.py) binding the client id to the
cluster for TOKEN_TTL_S, signed with the secret the WebSocket servers check it with
(TOKEN_SECRET, else VAR_DIR/secrets/token.key).

The registry lives in memory, so the API is served by gunicorn with ONE worker process (with
several threads): a second worker would keep a second, different registry. The registry does not
survive a restart; viewers whose connection drops register again.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

import requests
from flask import Flask

from emojistream import config, secrets, tokens, web, wsgi
from emojistream.events import InvalidEvent, check_identifier
from emojistream.json_api import ApiError, add_json_error_handlers, json_body
from emojistream.lifecycle import load_settings
from emojistream.logs import setup_logging

log = logging.getLogger("registration_api")

REGISTRY = "registry"  # keys of the registry and the health monitor in app.extensions
MONITOR = "health_monitor"
ENDPOINTS = "POST /register, POST /deregister, GET /clusters and GET /health"
# A re-registering client's cluster is polled again unless its last poll is this recent.
RECHECK_S = 0.5
NO_CLUSTER = ("no cluster is available: no WebSocket server answers its health check; "
              "try again shortly")

# probe(cluster) -> the server's live viewer count, or None when it is down.
Probe = Callable[[int], "int | None"]


class NoClusterAvailable(RuntimeError):
    """Every cluster's WebSocket server is down."""


@dataclasses.dataclass
class ClusterState:
    healthy: bool = False
    live: int | None = None        # live viewers in the last successful report
    reported_at: float = float("-inf")  # monotonic time that report was requested
    polled_at: float = float("-inf")    # monotonic time of the last poll, whatever its outcome
    # Clients assigned since the report, with the monotonic time of their assignment.
    pending: dict = dataclasses.field(default_factory=dict)


class Registry:
    """Which cluster each viewer is assigned to, and each cluster's health and load;
    thread-safe. Health comes from ``report`` (the HealthMonitor's polls)."""

    def __init__(self, clusters, clock: Callable[[], float] = time.monotonic):
        self.clusters = list(clusters)
        self._clock = clock
        self._assigned: dict[str, int] = {}
        self._counts = {n: 0 for n in self.clusters}
        self._state = {n: ClusterState() for n in self.clusters}
        self._next = 0  # index in self.clusters where the round-robin tie-break starts
        self._lock = threading.RLock()

    # --- health ---

    def report(self, cluster: int, live: int | None, requested_at: float) -> None:
        """The outcome of a health poll requested at ``requested_at``: the live viewer count,
        or None when the server did not answer."""
        with self._lock:
            state = self._state[cluster]
            state.polled_at = max(state.polled_at, requested_at)
            if live is None:
                state.healthy, state.live = False, None
                return
            if requested_at < state.reported_at:
                return  # an older poll answered late
            state.healthy, state.live, state.reported_at = True, live, requested_at
            state.pending = {client: at for client, at in state.pending.items()
                             if at > requested_at}

    def report_all(self, outcomes: dict[int, int | None], requested_at: float) -> None:
        """The outcomes of one round of polls, applied together."""
        with self._lock:
            for cluster, live in outcomes.items():
                self.report(cluster, live, requested_at)

    def mark_polled(self, cluster: int, requested_at: float) -> None:
        """A poll found the server up; its counts are left to the next round."""
        with self._lock:
            state = self._state[cluster]
            state.polled_at = max(state.polled_at, requested_at)

    def is_healthy(self, cluster: int) -> bool:
        with self._lock:
            return self._state[cluster].healthy

    def polled_at(self, cluster: int) -> float:
        with self._lock:
            return self._state[cluster].polled_at

    def load(self, cluster: int) -> int:
        """Live viewers last reported plus viewers assigned since."""
        with self._lock:
            state = self._state[cluster]
            return (state.live or 0) + len(state.pending)

    def live_count(self, cluster: int) -> int | None:
        with self._lock:
            return self._state[cluster].live

    # --- assignment ---

    def assignment(self, client_id: str) -> int | None:
        with self._lock:
            return self._assigned.get(client_id)

    def register(self, client_id: str) -> tuple[int, int | None]:
        """The client's cluster, and the one it had before (None for a new client; the same
        cluster when it keeps it). NoClusterAvailable when no cluster is healthy."""
        with self._lock:
            previous = self._assigned.get(client_id)
            if previous is not None and self._state[previous].healthy:
                return previous, previous
            cluster = self._least_loaded()
            if previous is not None:
                self._remove(client_id, previous)
            self._assigned[client_id] = cluster
            self._counts[cluster] += 1
            self._state[cluster].pending[client_id] = self._clock()
            return cluster, previous

    def deregister(self, client_id: str) -> int | None:
        """The cluster the client was assigned to, or None if it was not registered."""
        with self._lock:
            cluster = self._assigned.pop(client_id, None)
            if cluster is not None:
                self._remove(client_id, cluster)
            return cluster

    def _remove(self, client_id: str, cluster: int) -> None:
        self._assigned.pop(client_id, None)
        self._counts[cluster] -= 1
        self._state[cluster].pending.pop(client_id, None)

    def registered_count(self, cluster: int) -> int:
        with self._lock:
            return self._counts[cluster]

    def total(self) -> int:
        with self._lock:
            return len(self._assigned)

    def _least_loaded(self) -> int:
        """The first healthy cluster, from the round-robin position on, with the lowest load."""
        count = len(self.clusters)
        order = [self.clusters[(self._next + i) % count] for i in range(count)]
        healthy = [n for n in order if self._state[n].healthy]
        if not healthy:
            raise NoClusterAvailable(NO_CLUSTER)
        chosen = min(healthy, key=self.load)  # min keeps the first of equals
        self._next = (self.clusters.index(chosen) + 1) % count
        return chosen


class HttpProbe:
    """Asks a WebSocket server's GET /health for its live viewer count; None when it does not
    answer within WS_HEALTH_TIMEOUT_S or answers something else. A new connection each time:
    a server that died is noticed by the next poll."""

    def __init__(self, settings: config.Settings):
        self.settings = settings
        self.timeout_s = settings.ws_health_timeout_s

    def __call__(self, cluster: int) -> int | None:
        try:
            answer = requests.get(self.settings.ws_health_url(cluster), timeout=self.timeout_s)
            viewers = answer.json()["viewers"] if answer.status_code == 200 else None
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return None
        return viewers if type(viewers) is int and viewers >= 0 else None


class HealthMonitor:
    """Polls every cluster's health into the registry, all clusters in one round every
    ``interval_s`` (in parallel, so a round takes at most one probe timeout). A round's reports
    are applied together, as of the moment the round started: the loads of all clusters stay
    comparable. Stoppable."""

    def __init__(self, registry: Registry, probe: Probe, interval_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.registry = registry
        self.probe = probe
        self.interval_s = interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._round = threading.Lock()
        self._rechecks = {n: threading.Lock() for n in registry.clusters}

    def poll_all(self) -> None:
        """One round: poll every cluster now and record the outcomes."""
        with self._round:
            before = {n: self.registry.is_healthy(n) for n in self.registry.clusters}
            first = self.registry.polled_at(self.registry.clusters[0]) == float("-inf")
            requested_at = self._clock()
            outcomes: dict[int, int | None] = {}

            def probe(n: int) -> None:
                outcomes[n] = self._probe(n)

            threads = [threading.Thread(target=probe, args=(n,), daemon=True)
                       for n in self.registry.clusters]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            self.registry.report_all(outcomes, requested_at)
            for n, live in outcomes.items():
                self._log_change(n, before[n], live, first)

    def recheck(self, cluster: int, max_age_s: float | None = None) -> None:
        """Poll ``cluster`` now unless it was polled in the last ``max_age_s`` (default
        RECHECK_S; concurrent callers share one poll). Only a server found down is recorded:
        live counts come from whole rounds."""
        max_age_s = RECHECK_S if max_age_s is None else max_age_s
        if self._clock() - self.registry.polled_at(cluster) <= max_age_s:
            return
        with self._rechecks[cluster]:
            if self._clock() - self.registry.polled_at(cluster) <= max_age_s:
                return
            requested_at = self._clock()
            was_healthy = self.registry.is_healthy(cluster)
            live = self._probe(cluster)
            if live is None:
                self.registry.report(cluster, None, requested_at)
                self._log_change(cluster, was_healthy, None, False)
            else:
                self.registry.mark_polled(cluster, requested_at)

    def _probe(self, cluster: int) -> int | None:
        try:
            return self.probe(cluster)
        except Exception:  # a faulty probe must not end the polls
            log.exception("health probe of %s failed", cluster_id(cluster))
            return None

    def _log_change(self, cluster: int, was_healthy: bool, live: int | None,
                    first: bool) -> None:
        if live is not None and not was_healthy:
            log.info("%s is up (%d live viewer(s)): assignable", cluster_id(cluster), live)
        elif live is None and (was_healthy or first):
            log.warning("%s is down (its WebSocket server does not answer its health check): "
                        "not assignable", cluster_id(cluster))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="health-monitor")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll_all()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def cluster_id(cluster: int) -> str:
    return f"cluster{cluster}"


def endpoint_for(settings: config.Settings, cluster: int, token: str) -> str:
    base = settings.ws_public_url(cluster)
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}token={quote(token, safe='')}"


def check_client_id(body) -> str:
    """The client_id of a request body; ApiError(400) naming the problem. A client_id follows
    the rules of an event's user_id (it is sent as one)."""
    if not isinstance(body, dict):
        raise ApiError(400, 'body must be a JSON object like {"client_id": "..."}')
    if "client_id" not in body:
        raise ApiError(400, "missing field: client_id")
    try:
        check_identifier(body["client_id"], "client_id")
    except InvalidEvent as err:
        raise ApiError(400, str(err)) from None
    return body["client_id"]


def create_app(settings: config.Settings | None = None, registry: Registry | None = None,
               probe: Probe | None = None, poll: bool = True,
               token_secret: str | None = None) -> Flask:
    """The registration app. ``registry`` defaults to an empty one over the settings' clusters;
    ``probe`` (the health source) to HttpProbe. Every cluster is polled once before this
    returns; with ``poll`` a HealthMonitor then keeps polling in the background (stop it with
    ``app.extensions[MONITOR].stop()``). ``token_secret`` defaults to secrets.token_secret."""
    settings = settings or config.load()
    app = Flask(__name__, static_folder=None)
    registry = registry if registry is not None else Registry(settings.clusters)
    monitor = HealthMonitor(registry, probe if probe is not None else HttpProbe(settings),
                            settings.ws_health_poll_s)
    app.extensions[REGISTRY] = registry
    app.extensions[MONITOR] = monitor
    secret = token_secret if token_secret is not None else secrets.token_secret(settings)
    _add_routes(app, settings, registry, monitor, secret)
    web.add_web_page(app, settings)
    add_json_error_handlers(app, log, ENDPOINTS)
    monitor.poll_all()
    if poll:
        monitor.start()
    return app


def _add_routes(app: Flask, settings: config.Settings, registry: Registry,
                monitor: HealthMonitor, secret: str) -> None:
    @app.post("/register")
    def register():
        client_id = check_client_id(json_body())
        current = registry.assignment(client_id)
        if current is not None and registry.is_healthy(current):
            monitor.recheck(current)  # it registers again: is its server still there?
        try:
            cluster, previous = registry.register(client_id)
        except NoClusterAvailable as err:
            raise ApiError(503, str(err), headers={"Retry-After": "1"}) from None
        if previous is None:
            log.info("registered %r on %s", client_id, cluster_id(cluster))
        elif previous != cluster:
            log.info("moved %r from %s (down) to %s", client_id, cluster_id(previous),
                     cluster_id(cluster))
        token = tokens.issue(secret, client_id, cluster, settings.token_ttl_s, time.time())
        return {"status": "success", "cluster_id": cluster_id(cluster),
                "subscriber_endpoint": endpoint_for(settings, cluster, token)}

    @app.post("/deregister")
    def deregister():
        client_id = check_client_id(json_body())
        cluster = registry.deregister(client_id)
        if cluster is None:
            raise ApiError(404, f"client_id {client_id!r} is not registered")
        log.info("deregistered %r from %s", client_id, cluster_id(cluster))
        return {"status": "success"}

    @app.get("/clusters")
    def clusters():
        return [{"cluster_id": cluster_id(n), "endpoint": settings.ws_public_url(n),
                 "healthy": registry.is_healthy(n), "live_connections": registry.live_count(n),
                 "registered_viewers": registry.registered_count(n)}
                for n in registry.clusters]

    @app.get("/health")
    def health():
        return {"status": "ok", "registered_viewers": registry.total()}


def stop_monitor(_arbiter, worker) -> None:
    """gunicorn's worker_exit hook: stop the health polls of the exiting worker."""
    app = getattr(worker, "wsgi", None)
    monitor = getattr(app, "extensions", {}).get(MONITOR)
    if monitor is not None:
        monitor.stop()


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
    settings = load_settings(log)
    args = parse_args(argv, settings)
    settings = dataclasses.replace(settings, registration_host=args.host,
                                   registration_port=args.port,
                                   registration_threads=args.threads)
    try:
        secrets.token_secret(settings)  # created now, before the worker needs it
    except (OSError, secrets.SecretError) as err:
        log.error("cannot read the token secret: %s", err)
        return 1
    try:
        wsgi.check_port_free(settings.registration_host, settings.registration_port)
        log.info("listening on %s:%d (1 worker with %d threads), %d cluster(s): %s",
                 settings.registration_host, settings.registration_port,
                 settings.registration_threads, settings.cluster_count,
                 ", ".join(settings.ws_public_url(n) for n in settings.clusters))
        wsgi.serve(lambda: create_app(settings), name="registration_api",
                   host=settings.registration_host, port=settings.registration_port,
                   workers=1, threads=settings.registration_threads,
                   worker_exit=stop_monitor)
    except wsgi.PortInUse as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
