"""The registration API's Prometheus metrics: its counters summed over its worker processes
(prometheus-client's multiprocess mode, as the ingest API's: emojistream/common/metrics.py), and
each cluster's health and live connections as the answering worker last polled them."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from emojistream.common import metrics
from emojistream.common.metrics import new_registry


class RegistrationMetrics:
    """registration_api.py: registrations (by session: "new" or "resumed" from the token the
    viewer presented), deregistrations (a no-op, counted), each cluster's load."""

    def __init__(self, balancer, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else new_registry()
        self.registrations = Counter("emojistream_registrations",
                                     "Registrations answered 200, by session (new or resumed)",
                                     ["session"], registry=self.registry)
        self.deregistrations = Counter("emojistream_deregistrations",
                                       "Deregistrations answered 200 (a no-op)",
                                       registry=self.registry)
        self.cluster_load = _ClusterLoad(balancer)
        self.registry.register(self.cluster_load)

    def scrape_registry(self) -> CollectorRegistry:
        """What GET /metrics answers: with several workers, every worker's counters summed
        and this worker's view of the clusters; else this registry."""
        if not os.environ.get(metrics.MULTIPROC_ENV):
            return self.registry
        registry = metrics.multiprocess_registry()
        registry.register(self.cluster_load)
        return registry


class _ClusterLoad:
    """Each cluster's health and live connections, read from the balancer at scrape time."""

    def __init__(self, balancer):
        self.balancer = balancer

    def collect(self):
        healthy = GaugeMetricFamily("emojistream_cluster_healthy",
                                    "1 while the cluster's WebSocket server answers",
                                    labels=["cluster"])
        live = GaugeMetricFamily("emojistream_cluster_live_connections",
                                 "Viewer connections the cluster's server reports",
                                 labels=["cluster"])
        for n in self.balancer.clusters:
            healthy.add_metric([str(n)], int(self.balancer.is_healthy(n)))
            count = self.balancer.live_count(n)
            if count is not None:  # else its server is down: nothing to report
                live.add_metric([str(n)], count)
        return [healthy, live]
