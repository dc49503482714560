"""Reading what the pipeline wrote to Kafka, for tests and benchmarks."""

from __future__ import annotations

import json


def events_of(value: bytes) -> list[dict]:
    """The events of an emoji-events record: one JSON object, or a JSON array of them."""
    parsed = json.loads(value)
    return parsed if isinstance(parsed, list) else [parsed]
