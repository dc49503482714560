"""Prometheus metrics (prometheus-client): how every component serves them, and what they share.

Each component defines its metrics beside itself (emojistream/*/metrics.py), each in a registry
of its own (``new_registry``), so that a test can build a component twice in one process and read
exact values. docs/operations.md lists them all; labels stay bounded (reasons, endpoints, status
codes, cluster numbers), never a user's or a client's id.

The HTTP components answer ``GET /metrics`` on their own port (a WebSocket server before the
handshake, like ``/health``); the processes that only talk to Kafka serve it on a port of their
own (``serve``; emojistream/topology.py says which). The ingest API's granian workers use
prometheus-client's multiprocess mode: ``prepare_multiprocess_dir`` in the parent,
``use_multiprocess_values`` in each worker, and whichever worker answers sums them all.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from kafka.errors import KafkaError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
    start_http_server,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# No *_created sample beside every counter and histogram: Prometheus does not use them, and they
# double the size of a scrape.
disable_created_metrics()
PATH = "/metrics"

log = logging.getLogger(__name__)


def new_registry() -> CollectorRegistry:
    """A registry for one component's metrics."""
    return CollectorRegistry()


def sample_value(registry: CollectorRegistry, name: str, labels: dict | None = None) -> float:
    """The value of one sample (0 when it has none yet), e.g. for a component's closing log."""
    return registry.get_sample_value(name, labels or {}) or 0.0


# --- serving ---------------------------------------------------------------------------------

def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in Prometheus's text format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve(registry: CollectorRegistry, host: str, port: int, component: str) -> bool:
    """Serve ``registry`` at http://host:port/metrics in a background thread. A port that is
    taken is logged and the component goes on without metrics: forwarding matters more."""
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            raise
        log.warning("%s: metrics port %d on %s is already in use; no metrics from this process",
                    component, port, host)
        return False
    log.info("%s: metrics at http://%s:%d%s", component, host, port, PATH)
    return True


def prepare_multiprocess_dir(path: Path) -> None:
    """In a parent process before it starts workers: an empty folder for their metric files
    (one run's files must not add to the next run's counts), named in the environment that the
    workers inherit."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)


def use_multiprocess_values() -> bool:
    """In a worker: make the metrics created from now on write to the multiprocess folder.

    prometheus-client picks its value class when it is first imported, which in a forked worker
    happened in the parent before the folder was named; so it is picked again here."""
    if not os.environ.get(MULTIPROC_ENV):
        return False
    values.ValueClass = values.get_value_class()
    return True


def multiprocess_registry() -> CollectorRegistry:
    """A registry that reads every worker's metric files."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


def forget_process(pid: int) -> None:
    """As a worker exits: its live gauges no longer count (its counters do)."""
    if os.environ.get(MULTIPROC_ENV):
        mark_process_dead(pid)


def ready_gauge(registry: CollectorRegistry) -> Gauge:
    """1 once a component that serves only its metrics does its work (joined its consumer
    group, or started its query): what the supervisor waits for (emojistream.ops.readiness)."""
    return Gauge("emojistream_ready", "1 once the component does its work", registry=registry)


# --- what the publishers and the subscribers share --------------------------------------------

class RelayMetrics:
    """The publishers' (prefix "relay") and the subscribers' (prefix "subscriber")."""

    def __init__(self, prefix: str = "relay", registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else new_registry()
        self.prefix = f"emojistream_{prefix}"
        self.forwarded = Counter(f"emojistream_{prefix}_forwarded",
                                 "Window updates forwarded", registry=self.registry)
        self.skipped = Counter(f"emojistream_{prefix}_skipped",
                               "Records skipped (not a window update, or refused by Kafka)",
                               registry=self.registry)
        self.retried = Counter(f"emojistream_{prefix}_retries",
                               "Batches to send again after a failure (a subscriber: connections "
                               "to its WebSocket server lost or refused)", registry=self.registry)
        self.lag = Gauge("emojistream_consumer_lag",
                         "Records of the source topic not consumed yet (all partitions)",
                         registry=self.registry)
        self.ready = ready_gauge(self.registry)

    def totals(self) -> tuple[int, int, int]:
        """Updates forwarded, records skipped, retries: for a closing log line."""
        return tuple(int(sample_value(self.registry, f"{self.prefix}_{name}_total"))
                     for name in ("forwarded", "skipped", "retries"))  # type: ignore[return-value]

    def skipped_count(self) -> int:
        return int(sample_value(self.registry, f"{self.prefix}_skipped_total"))

    def observe_lag(self, consumer) -> None:
        lag = consumer_lag(consumer)
        if lag is not None:
            self.lag.set(lag)


def consumer_lag(consumer) -> int | None:
    """Records between the consumer's position and the end of its partitions, from what the last
    fetches told it (no request to Kafka); None before it knows."""
    total, known = 0, False
    for tp in consumer.assignment():
        end = consumer.highwater(tp)
        if end is None:
            continue
        try:
            position = consumer.position(tp, timeout_ms=0)
        except KafkaError:  # not assigned any more, or no answer yet
            continue
        if position is None:
            continue
        total, known = total + max(0, end - position), True
    return total if known else None
