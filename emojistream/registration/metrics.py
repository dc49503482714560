"""The registration API's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from emojistream.common.metrics import new_registry


class RegistrationMetrics:
    """registration_api.py: registrations, and each cluster's load read from the registry."""

    def __init__(self, registry_of_viewers, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else new_registry()
        self.registrations = Counter("emojistream_registrations",
                                     "Registrations answered 200", registry=self.registry)
        self.deregistrations = Counter("emojistream_deregistrations",
                                       "Deregistrations answered 200", registry=self.registry)
        self.registry.register(_ClusterLoad(registry_of_viewers))


class _ClusterLoad:
    """Each cluster's health, live connections and registered viewers, read at scrape time."""

    def __init__(self, viewers):
        self.viewers = viewers

    def collect(self):
        families = {
            "healthy": GaugeMetricFamily("emojistream_cluster_healthy",
                                         "1 while the cluster's WebSocket server answers",
                                         labels=["cluster"]),
            "live": GaugeMetricFamily("emojistream_cluster_live_connections",
                                      "Viewer connections the cluster's server reports",
                                      labels=["cluster"]),
            "registered": GaugeMetricFamily("emojistream_cluster_registered_viewers",
                                            "Viewers registered on the cluster",
                                            labels=["cluster"]),
        }
        for n in self.viewers.clusters:
            families["healthy"].add_metric([str(n)], int(self.viewers.is_healthy(n)))
            live = self.viewers.live_count(n)
            if live is not None:  # else its server is down: nothing to report
                families["live"].add_metric([str(n)], live)
            families["registered"].add_metric([str(n)], self.viewers.registered_count(n))
        return list(families.values())
