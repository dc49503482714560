"""Accepted events coalesced into Kafka records: a JSON array of up to
PRODUCER_EVENTS_PER_RECORD events each, received within half of EVENT_TIME_MARGIN_S of each other
(the aggregator checks every event's time against its record's timestamp)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka import codec

from emojistream.ingest.settings import IngestSettings

# Below the broker's default message.max.bytes (1 MiB + 12), for one record.
MAX_RECORD_BYTES = 900_000

CODECS = {"gzip": (codec.has_gzip, "(built in)"), "snappy": (codec.has_snappy, "python-snappy"),
          "lz4": (codec.has_lz4, "lz4"), "zstd": (codec.has_zstd, "zstandard")}


def compression_type(settings: IngestSettings) -> str | None:
    """PRODUCER_COMPRESSION as kafka-python wants it; ValueError when unusable here."""
    name = settings.producer_compression.strip().lower()
    if name in ("", "none"):
        return None
    if name not in CODECS:
        raise ValueError(f"PRODUCER_COMPRESSION must be one of none, {', '.join(CODECS)}; "
                         f"got {settings.producer_compression!r}")
    available, package = CODECS[name]
    if not available():
        raise ValueError(f"PRODUCER_COMPRESSION={name} needs the Python package {package}")
    return name


@dataclass
class Record:
    """Events on their way to Kafka as one record."""

    received_ms: int  # when the API received the earliest of them
    events: list[bytes] = field(default_factory=list)
    size: int = 0

    def value(self) -> bytes:
        if len(self.events) == 1:
            return self.events[0]
        return b"[" + b",".join(self.events) + b"]"


def coalesce(batches: list[tuple[int, list[bytes]]], events_per_record: int,
             span_ms: int) -> list[Record]:
    """Records of the encoded events of ``batches`` ((received ms, events), in arrival order):
    at most ``events_per_record`` events and MAX_RECORD_BYTES each, received within ``span_ms``
    of the record's first."""
    records: list[Record] = []
    current: Record | None = None
    for received_ms, events in batches:
        for event in events:
            if (current is None or len(current.events) >= events_per_record
                    or current.size + len(event) + 1 > MAX_RECORD_BYTES
                    or abs(received_ms - current.received_ms) > span_ms):
                current = Record(received_ms)
                records.append(current)
            current.events.append(event)
            current.size += len(event) + 1
            current.received_ms = min(current.received_ms, received_ms)
    return records
