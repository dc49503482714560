"""The ingest API's Prometheus metrics (summed over its workers: emojistream/common/metrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from emojistream.common.metrics import new_registry, sample_value


class IngestMetrics:
    """Requests, events accepted and refused, the producer's buffer and errors."""

    REASONS = ("invalid", "unknown_stream", "too_large", "unavailable", "rate_limited",
               "unauthorized")

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else new_registry()
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

    def set_buffer(self, events: int, size: int) -> None:
        """The events, and their bytes, waiting for Kafka now."""
        self.buffer_events.set(events)
        self.buffer_bytes.set(size)

    def lost_count(self) -> int:
        """Events this process accepted and never delivered."""
        return int(sample_value(self.registry, "emojistream_api_events_lost_total"))
