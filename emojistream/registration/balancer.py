"""Each cluster's health and load, and the choice of a cluster for a viewer, for the
registration API (registration_api.py). No viewer is remembered: the balancer knows counts, not
who (docs/delivery.md#registration-and-balancing).

    balancer = Balancer(settings.clusters)
    monitor = HealthMonitor(balancer, HttpProbe(settings), settings.ws_health_poll_s)
    monitor.start()                              # polls every server's GET /health
    cluster = balancer.assign()                  # the least loaded healthy cluster
    cluster = balancer.assign(keep=2)            # 2 while it is healthy, else the least loaded
"""

from __future__ import annotations

import collections
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


@dataclasses.dataclass
class ClusterState:
    healthy: bool = False
    live: int | None = None        # live viewers in the last successful report
    streams: dict = dataclasses.field(default_factory=dict)  # and its streams
    reported_at: float = float("-inf")  # monotonic time that report was requested
    polled_at: float = float("-inf")    # monotonic time of the last poll, whatever its outcome
    # The monotonic times of the viewers assigned since the report (oldest first).
    pending: collections.deque = dataclasses.field(default_factory=collections.deque)


class Balancer:
    """Each cluster's health and load, and which cluster a viewer gets; thread-safe. Health
    comes from ``report`` (the HealthMonitor's polls). Every registration process has its own,
    fed by its own polls of the same servers: the servers' live connections are the truth all
    of them share."""

    def __init__(self, clusters, clock: Callable[[], float] = time.monotonic):
        self.clusters = list(clusters)
        self._clock = clock
        self._state = {n: ClusterState() for n in self.clusters}
        self._next = 0  # index in self.clusters where the round-robin tie-break starts
        self._lock = threading.Lock()

    # --- health ---

    def report(self, cluster: int, health: ClusterHealth | None, requested_at: float) -> None:
        """The outcome of a health poll requested at ``requested_at``: the server's health, or
        None when it did not answer."""
        with self._lock:
            self._report(cluster, health, requested_at)

    def _report(self, cluster: int, health: ClusterHealth | None, requested_at: float) -> None:
        state = self._state[cluster]
        state.polled_at = max(state.polled_at, requested_at)
        if health is None:
            state.healthy, state.live, state.streams = False, None, {}
            state.pending.clear()
            return
        if requested_at < state.reported_at:
            return  # an older poll answered late
        state.healthy, state.live, state.reported_at = True, health.viewers, requested_at
        state.streams = health.streams
        while state.pending and state.pending[0] <= requested_at:
            state.pending.popleft()  # counted by the server now, if it connected

    def report_all(self, outcomes: dict[int, ClusterHealth | None],
                   requested_at: float) -> None:
        """The outcomes of one round of polls, applied together."""
        with self._lock:
            for cluster, health in outcomes.items():
                self._report(cluster, health, requested_at)

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
        """Live viewers last reported plus viewers this process assigned since."""
        with self._lock:
            return self._load(cluster)

    def _load(self, cluster: int) -> int:
        state = self._state[cluster]
        return (state.live or 0) + len(state.pending)

    def live_count(self, cluster: int) -> int | None:
        """The server's live viewer connections at the last poll (None while it is down)."""
        with self._lock:
            return self._state[cluster].live

    def live_total(self) -> int:
        """Live viewer connections on every healthy cluster at the last polls."""
        with self._lock:
            return sum(state.live or 0 for state in self._state.values() if state.healthy)

    def healthy_count(self) -> int:
        with self._lock:
            return sum(state.healthy for state in self._state.values())

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

    def assign(self, keep: int | None = None) -> int:
        """``keep`` (the cluster of the token a viewer presents) while it is one of the clusters
        and healthy; else the least loaded healthy cluster, counted as pending there until the
        next report. NoClusterAvailable when no cluster is healthy."""
        with self._lock:
            if keep is not None and keep in self._state and self._state[keep].healthy:
                return keep
            cluster = self._least_loaded()
            self._state[cluster].pending.append(self._clock())
            return cluster

    def _least_loaded(self) -> int:
        """The first healthy cluster, from the round-robin position on, with the lowest load."""
        count = len(self.clusters)
        order = [self.clusters[(self._next + i) % count] for i in range(count)]
        healthy = [n for n in order if self._state[n].healthy]
        if not healthy:
            raise NoClusterAvailable(NO_CLUSTER)
        chosen = min(healthy, key=self._load)  # min keeps the first of equals
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
    """Polls every cluster's health into the balancer, all clusters in one round every
    ``interval_s`` (in parallel, so a round takes at most one probe timeout). A round's reports
    are applied together, as of the moment the round started: the loads of all clusters stay
    comparable. Stoppable."""

    def __init__(self, balancer: Balancer, probe: Probe, interval_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.balancer = balancer
        self.probe = probe
        self.interval_s = interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._round = threading.Lock()
        self._rechecks = {n: threading.Lock() for n in balancer.clusters}

    def poll_all(self) -> None:
        """One round: poll every cluster now and record the outcomes."""
        with self._round:
            before = {n: self.balancer.is_healthy(n) for n in self.balancer.clusters}
            first = self.balancer.polled_at(self.balancer.clusters[0]) == float("-inf")
            requested_at = self._clock()
            outcomes: dict[int, ClusterHealth | None] = {}

            def probe(n: int) -> None:
                outcomes[n] = self._probe(n)

            threads = [threading.Thread(target=probe, args=(n,), daemon=True)
                       for n in self.balancer.clusters]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            self.balancer.report_all(outcomes, requested_at)
            for n, health in outcomes.items():
                self._log_change(n, before[n], health, first)

    def recheck(self, cluster: int, max_age_s: float | None = None) -> None:
        """Poll ``cluster`` now unless it was polled in the last ``max_age_s`` (default
        RECHECK_S; concurrent callers share one poll). Only a server found down is recorded:
        live counts come from whole rounds."""
        max_age_s = RECHECK_S if max_age_s is None else max_age_s
        if self._clock() - self.balancer.polled_at(cluster) <= max_age_s:
            return
        with self._rechecks[cluster]:
            if self._clock() - self.balancer.polled_at(cluster) <= max_age_s:
                return
            requested_at = self._clock()
            was_healthy = self.balancer.is_healthy(cluster)
            health = self._probe(cluster)
            if health is None:
                self.balancer.report(cluster, None, requested_at)
                self._log_change(cluster, was_healthy, None, False)
            else:
                self.balancer.mark_polled(cluster, requested_at)

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
