"""Prometheus metrics of every component (prometheus-client), and how each serves them.

Every metric is named ``emojistream_...`` and defined here, so this file is the list of what
can be scraped (docs/operations.md has it as a table). Labels stay bounded: reasons, endpoints,
status codes and cluster numbers, never a user's or a client's id.

Each component's metrics live in a registry of their own (not prometheus-client's global one),
so that a test can build a component twice in one process and read exact values.

How they are served:

- the HTTP components (ingest API, registration API) answer ``GET /metrics`` on their own port;
- each WebSocket server answers ``GET /metrics`` on its own port, before the WebSocket handshake
  (websockets' process_request), like ``/health``;
- the processes that only talk to Kafka (aggregator, publishers, subscribers) serve it on a port
  of their own (``serve``; the ports are in emojistream/config.py).

The ingest API runs several granian worker processes: they use prometheus-client's multiprocess
mode (``prepare_multiprocess_dir`` in the parent, ``use_multiprocess_values`` in each worker), and
whichever worker answers ``/metrics`` sums the files of all of them.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from pathlib import Path

from kafka.errors import KafkaError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# No *_created sample beside every counter and histogram: Prometheus does not use them, and they
# double the size of a scrape.
disable_created_metrics()
PATH = "/metrics"

log = logging.getLogger(__name__)


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


# --- ingest API ------------------------------------------------------------------------------

class IngestMetrics:
    """emoji_api.py: requests, events accepted and refused, the producer's buffer and errors."""

    REASONS = ("invalid", "unknown_stream", "too_large", "unavailable")

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter("emojistream_api_requests", "HTTP requests answered",
                                ["endpoint", "status"], registry=self.registry)
        self.accepted = Counter("emojistream_api_events_accepted",
                                "Events accepted (answered 200) and handed to the producer",
                                registry=self.registry)
        self.refused = Counter("emojistream_api_events_refused", "Events refused, by reason",
                               ["reason"], registry=self.registry)
        for reason in self.REASONS:
            self.refused.labels(reason)
        self.buffer_bytes = Gauge("emojistream_api_producer_buffer_bytes",
                                  "Bytes of events waiting for Kafka's acknowledgement",
                                  registry=self.registry, multiprocess_mode="livesum")
        self.buffer_events = Gauge("emojistream_api_producer_buffer_events",
                                   "Events waiting for Kafka's acknowledgement",
                                   registry=self.registry, multiprocess_mode="livesum")
        self.send_errors = Counter("emojistream_api_send_errors",
                                   "Records Kafka did not take (their events are lost)",
                                   registry=self.registry)
        self.lost = Counter("emojistream_api_events_lost", "Events accepted but never delivered",
                            registry=self.registry)
        self._seen = {"send_errors": 0, "lost_events": 0}

    def sample(self, stats: dict) -> None:
        """Copy a sink's ``stats()`` into the metrics (its totals as counter increments)."""
        self.buffer_bytes.set(stats["pending_bytes"])
        self.buffer_events.set(stats["pending_events"])
        for key, counter in (("send_errors", self.send_errors), ("lost_events", self.lost)):
            if stats[key] > self._seen[key]:
                counter.inc(stats[key] - self._seen[key])
                self._seen[key] = stats[key]


# --- aggregator ------------------------------------------------------------------------------

class AggregatorMetrics:
    """spark_aggregator.py: from each micro-batch's progress (StreamingQueryProgress)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.batches = Counter("emojistream_aggregator_batches", "Micro-batches run", registry=r)
        self.duration = Histogram("emojistream_aggregator_batch_duration_seconds",
                                  "Time a micro-batch took (triggerExecution)", registry=r,
                                  buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30))
        self.records = Counter("emojistream_aggregator_input_records",
                               "Kafka records read", registry=r)
        self.events = Counter("emojistream_aggregator_events", "Events read", registry=r)
        self.skipped = Counter("emojistream_aggregator_events_skipped",
                               "Events skipped, by reason", ["reason"], registry=r)
        for reason in ("malformed", "untimely"):
            self.skipped.labels(reason)
        self.input_rate = Gauge("emojistream_aggregator_input_rows_per_second",
                                "Records per second arriving, in the last batch", registry=r)
        self.processed_rate = Gauge("emojistream_aggregator_processed_rows_per_second",
                                    "Records per second processed, in the last batch",
                                    registry=r)
        self.watermark_delay = Gauge("emojistream_aggregator_watermark_delay_seconds",
                                     "How far the watermark is behind the clock", registry=r)
        self.state_rows = Gauge("emojistream_aggregator_state_rows",
                                "Rows (stream, window) in the aggregation's state", registry=r)

    def record(self, progress, now: float | None = None) -> None:
        """Account for one batch's progress (pyspark's StreamingQueryProgress)."""
        self.batches.inc()
        self.duration.observe(progress.durationMs.get("triggerExecution", 0) / 1000)
        self.records.inc(progress.numInputRows)
        self.input_rate.set(_number(progress.inputRowsPerSecond))
        self.processed_rate.set(_number(progress.processedRowsPerSecond))
        observed = progress.observedMetrics.get("input")
        if observed is not None:
            self.events.inc(observed["events"])
            self.skipped.labels("malformed").inc(observed["malformed"])
            self.skipped.labels("untimely").inc(observed["untimely"])
        watermark = (progress.eventTime or {}).get("watermark")
        if watermark:
            moment = _epoch_seconds(watermark)
            if moment > 0:  # the epoch: no watermark yet
                self.watermark_delay.set((time.time() if now is None else now) - moment)
        self.state_rows.set(sum(op.numRowsTotal for op in progress.stateOperators))


def _number(value) -> float:
    """Spark reports NaN or nothing for the rate of an empty batch: 0 then."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if number == number else 0.0


def _epoch_seconds(text: str) -> float:
    from .events import parse_timestamp
    return parse_timestamp(text).timestamp()


# --- publishers and subscribers ----------------------------------------------------------------

class RelayMetrics:
    """main_publisher.py and cluster_publisher.py (and, with other help texts, subscriber.py)."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "relay"):
        self.registry = registry if registry is not None else CollectorRegistry()
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


# --- WebSocket server ------------------------------------------------------------------------

class WsMetrics:
    """ws_server.py: viewers, broadcasts and their duration, viewers dropped and refused."""

    def __init__(self, hub, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        Gauge("emojistream_ws_viewers", "Viewer connections open", registry=r).set_function(
            lambda: len(hub.viewers))
        Gauge("emojistream_ws_subscribers", "Subscriber connections open",
              registry=r).set_function(lambda: len(hub.subscribers))
        self.broadcasts = Counter("emojistream_ws_broadcasts",
                                  "Updates broadcast to a stream's viewers", registry=r)
        self.messages = Counter("emojistream_ws_messages_sent",
                                "Messages written to viewers by broadcasts", registry=r)
        self.duration = Histogram("emojistream_ws_broadcast_duration_seconds",
                                  "Time one broadcast took (all its batches)", registry=r,
                                  buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                           0.25, 0.5, 1, 2.5))
        self.slow_dropped = Counter("emojistream_ws_slow_viewers_dropped",
                                    "Viewers closed for not reading (4408)", registry=r)
        self.tokens_refused = Counter("emojistream_ws_tokens_refused",
                                      "Viewers refused for their token (4401, 4403)", registry=r)
        self.updates_dropped = Counter("emojistream_ws_updates_dropped",
                                       "Updates from subscribers not broadcast, by reason",
                                       ["reason"], registry=r)
        for reason in ("duplicate", "stale", "invalid"):
            self.updates_dropped.labels(reason)


# --- registration API --------------------------------------------------------------------------

class RegistrationMetrics:
    """registration_api.py: registrations, and each cluster's load read from the registry."""

    def __init__(self, registry_of_viewers, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
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
