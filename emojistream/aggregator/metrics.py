"""The aggregator's Prometheus metrics, from each micro-batch's progress."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from emojistream.common.events import parse_timestamp
from emojistream.common.metrics import new_registry, ready_gauge, sample_value


class AggregatorMetrics:
    """From each micro-batch's progress (StreamingQueryProgress)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else new_registry()
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
        self.dropped_late = Counter(
            "emojistream_aggregator_rows_dropped_by_watermark",
            "Rows the aggregation dropped as later than the watermark (each batch's "
            "numRowsDroppedByWatermark: after Spark's partial aggregation, one row per stream "
            "and window of a batch's Kafka partition, holding one or more events)", registry=r)
        self.input_rate = Gauge("emojistream_aggregator_input_rows_per_second",
                                "Records per second arriving, in the last batch", registry=r)
        self.processed_rate = Gauge("emojistream_aggregator_processed_rows_per_second",
                                    "Records per second processed, in the last batch",
                                    registry=r)
        self.watermark_delay = Gauge("emojistream_aggregator_watermark_delay_seconds",
                                     "How far the watermark is behind the clock", registry=r)
        self.state_rows = Gauge("emojistream_aggregator_state_rows",
                                "Rows (stream, window) in the aggregation's state", registry=r)
        self.ready = ready_gauge(r)

    def records_total(self) -> int:
        return int(sample_value(self.registry, "emojistream_aggregator_input_records_total"))

    def skipped_total(self) -> int:
        return sum(int(sample_value(self.registry, "emojistream_aggregator_events_skipped_total",
                                    {"reason": reason})) for reason in ("malformed", "untimely"))

    def dropped_late_total(self) -> int:
        return int(sample_value(self.registry,
                                "emojistream_aggregator_rows_dropped_by_watermark_total"))

    def record(self, progress, now: float | None = None) -> int:
        """Account for one batch's progress (pyspark's StreamingQueryProgress); the rows it
        dropped as late."""
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
        dropped = dropped_by_watermark(progress)
        self.dropped_late.inc(dropped)
        return dropped


def dropped_by_watermark(progress) -> int:
    """The rows a batch's state operators dropped as later than the watermark."""
    return sum(op.numRowsDroppedByWatermark for op in progress.stateOperators)


def _number(value) -> float:
    """Spark reports NaN or nothing for the rate of an empty batch: 0 then."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if number == number else 0.0


def _epoch_seconds(text: str) -> float:
    return parse_timestamp(text).timestamp()
