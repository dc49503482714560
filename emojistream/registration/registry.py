"""Which cluster each viewer is assigned to, and each cluster's health and load, for the
registration API (registration_api.py). docs/delivery.md explains the balancing.

    registry = Registry(settings.clusters)
    monitor = HealthMonitor(registry, HttpProbe(settings), settings.ws_health_poll_s)
    monitor.start()                              # polls every server's GET /health
    cluster, previous = registry.register("client_1")
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import requests

from emojistream import topology
from emojistream.registration.settings import RegistrationSettings

log = logging.getLogger("registration_api")

# A re-registering client's cluster is polled again unless its last poll is this recent.
RECHECK_S = 0.5
NO_CLUSTER = ("no cluster is available: no WebSocket server answers its health check; "
              "try again shortly")



@dataclasses.dataclass(frozen=True)
class ClusterHealth:
    """What a WebSocket server's GET /health reports: its live viewers, and for each stream
    it has seen, {"viewers": V, "last_window": START, "last_window_total": T}."""

    viewers: int
    streams: dict = dataclasses.field(default_factory=dict)


# probe(cluster) -> the server's health, or None when it is down.
Probe = Callable[[int], "ClusterHealth | None"]


class NoClusterAvailable(RuntimeError):
    """Every cluster's WebSocket server is down."""


class RegistryFull(RuntimeError):
    """The registry holds as many viewers as it may (REGISTRY_MAX_VIEWERS)."""


@dataclasses.dataclass
class ClusterState:
    healthy: bool = False
    live: int | None = None        # live viewers in the last successful report
    streams: dict = dataclasses.field(default_factory=dict)  # and its streams
    reported_at: float = float("-inf")  # monotonic time that report was requested
    polled_at: float = float("-inf")    # monotonic time of the last poll, whatever its outcome
    # Clients assigned since the report, with the monotonic time of their assignment.
    pending: dict = dataclasses.field(default_factory=dict)


class Registry:
    """Which cluster each viewer is assigned to, and each cluster's health and load;
    thread-safe. Health comes from ``report`` (the HealthMonitor's polls).

    Bounded: a registration not renewed (by registering again) within ``ttl_s`` expires, and
    at most ``max_viewers`` are kept."""

    def __init__(self, clusters, clock: Callable[[], float] = time.monotonic,
                 ttl_s: float = float("inf"), max_viewers: int | None = None):
        self.clusters = list(clusters)
        self._clock = clock
        self.ttl_s = ttl_s
        self.max_viewers = max_viewers
        self._assigned: dict[str, int] = {}
        # client id -> when it last registered, oldest first (a renewal moves it to the end).
        self._registered_at: dict[str, float] = {}
        self._counts = {n: 0 for n in self.clusters}
        self._state = {n: ClusterState() for n in self.clusters}
        self._next = 0  # index in self.clusters where the round-robin tie-break starts
        self._lock = threading.RLock()

    # --- health ---

    def report(self, cluster: int, health: ClusterHealth | None, requested_at: float) -> None:
        """The outcome of a health poll requested at ``requested_at``: the server's health, or
        None when it did not answer."""
        with self._lock:
            state = self._state[cluster]
            state.polled_at = max(state.polled_at, requested_at)
            if health is None:
                state.healthy, state.live, state.streams = False, None, {}
                return
            if requested_at < state.reported_at:
                return  # an older poll answered late
            state.healthy, state.live, state.reported_at = True, health.viewers, requested_at
            state.streams = health.streams
            state.pending = {client: at for client, at in state.pending.items()
                             if at > requested_at}

    def report_all(self, outcomes: dict[int, ClusterHealth | None],
                   requested_at: float) -> None:
        """The outcomes of one round of polls, applied together."""
        with self._lock:
            for cluster, health in outcomes.items():
                self.report(cluster, health, requested_at)

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

    def stream_stats(self, stream_id: str) -> dict:
        """A stream's live viewers on every healthy cluster, and its latest window and that
        window's total (every cluster sees every stream's updates)."""
        with self._lock:
            found = [state.streams.get(stream_id) for state in self._state.values()
                     if state.healthy]
        reports: list[dict] = [r for r in found if isinstance(r, dict)]
        latest: dict = max((r for r in reports if r.get("last_window")),
                           key=lambda r: r["last_window"], default={})
        return {"viewers": sum(r.get("viewers", 0) for r in reports),
                "last_window": latest.get("last_window"),
                "last_window_total": latest.get("last_window_total", 0)}

    # --- assignment ---

    def assignment(self, client_id: str) -> int | None:
        with self._lock:
            return self._assigned.get(client_id)

    def register(self, client_id: str) -> tuple[int, int | None]:
        """The client's cluster, and the one it had before (None for a new client; the same
        cluster when it keeps it). NoClusterAvailable when no cluster is healthy, RegistryFull
        when a new client finds no room."""
        with self._lock:
            now = self._clock()
            self.expire(now)
            previous = self._assigned.get(client_id)
            if previous is not None and self._state[previous].healthy:
                self._renew(client_id, now)
                return previous, previous
            if previous is None and self.max_viewers is not None \
                    and len(self._assigned) >= self.max_viewers:
                raise RegistryFull(f"the registry is full: {self.max_viewers} viewers "
                                   "(REGISTRY_MAX_VIEWERS); try again later")
            cluster = self._least_loaded()
            if previous is not None:
                self._remove(client_id, previous)
            self._assigned[client_id] = cluster
            self._counts[cluster] += 1
            self._state[cluster].pending[client_id] = now
            self._renew(client_id, now)
            return cluster, previous

    def deregister(self, client_id: str) -> int | None:
        """The cluster the client was assigned to, or None if it was not registered."""
        with self._lock:
            cluster = self._assigned.get(client_id)
            if cluster is not None:
                self._remove(client_id, cluster)
            return cluster

    def expire(self, now: float | None = None) -> int:
        """Forget the registrations older than the TTL; how many there were."""
        with self._lock:
            now = self._clock() if now is None else now
            expired = []
            for client_id, at in self._registered_at.items():  # oldest first
                if now - at <= self.ttl_s:
                    break
                expired.append(client_id)
            for client_id in expired:
                self._remove(client_id, self._assigned[client_id])
            return len(expired)

    def _renew(self, client_id: str, now: float) -> None:
        self._registered_at.pop(client_id, None)
        self._registered_at[client_id] = now

    def _remove(self, client_id: str, cluster: int) -> None:
        del self._assigned[client_id]
        self._registered_at.pop(client_id, None)
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
    """Asks a WebSocket server's GET /health for its health; None when it does not answer
    within WS_HEALTH_TIMEOUT_S or answers something else. A new connection each time: a server
    that died is noticed by the next poll."""

    def __init__(self, settings: RegistrationSettings):
        self.settings = settings
        self.timeout_s = settings.ws_health_timeout_s

    def __call__(self, cluster: int) -> ClusterHealth | None:
        try:
            answer = requests.get(topology.ws_health_url(self.settings, cluster),
                                  timeout=self.timeout_s)
            health = answer.json() if answer.status_code == 200 else {}
            viewers, streams = health["viewers"], health.get("streams", {})
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return None
        if type(viewers) is not int or viewers < 0 or not isinstance(streams, dict):
            return None
        return ClusterHealth(viewers, streams)


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
        """One round: poll every cluster now and record the outcomes (and forget expired
        registrations, so the counts stay true while nobody registers)."""
        self.registry.expire()
        with self._round:
            before = {n: self.registry.is_healthy(n) for n in self.registry.clusters}
            first = self.registry.polled_at(self.registry.clusters[0]) == float("-inf")
            requested_at = self._clock()
            outcomes: dict[int, ClusterHealth | None] = {}

            def probe(n: int) -> None:
                outcomes[n] = self._probe(n)

            threads = [threading.Thread(target=probe, args=(n,), daemon=True)
                       for n in self.registry.clusters]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            self.registry.report_all(outcomes, requested_at)
            for n, health in outcomes.items():
                self._log_change(n, before[n], health, first)

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
            health = self._probe(cluster)
            if health is None:
                self.registry.report(cluster, None, requested_at)
                self._log_change(cluster, was_healthy, None, False)
            else:
                self.registry.mark_polled(cluster, requested_at)

    def _probe(self, cluster: int) -> ClusterHealth | None:
        try:
            return self.probe(cluster)
        except Exception:  # a faulty probe must not end the polls
            log.exception("health probe of %s failed", cluster_id(cluster))
            return None

    def _log_change(self, cluster: int, was_healthy: bool, health: ClusterHealth | None,
                    first: bool) -> None:
        if health is not None and not was_healthy:
            log.info("%s is up (%d live viewer(s)): assignable", cluster_id(cluster),
                     health.viewers)
        elif health is None and (was_healthy or first):
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
