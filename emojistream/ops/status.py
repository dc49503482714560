"""What scripts/status.sh shows: every component of this host (Kafka's brokers included), its
state as its supervisord reports it, its pid, how long it has run and how often it crashed (and
was restarted), the URL of its metrics, and for the Kafka consumers their lag (read from their
own /metrics). ``python -m emojistream.ops.system status [--json]`` prints it."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from emojistream.config import Settings
from emojistream.ops.components import Component
from emojistream.ops.crashes import read_counts

LAG_METRIC = "emojistream_consumer_lag"
CONSUMERS = ("subscriber", "cluster_publisher", "main_publisher")
SCRAPE_TIMEOUT_S = 2.0


def consumer_lag(metrics_url: str) -> int | None:
    """The lag a consumer reports at its /metrics; None when it does not answer."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=SCRAPE_TIMEOUT_S) as answer:
            text = answer.read().decode("utf-8")
    except (OSError, urllib.error.URLError):
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == LAG_METRIC:
                return int(sample.value)
    return None


def rows(settings: Settings, host: str, components: list[Component], info: dict[str, dict],
         crashes_file: Path, now: float | None = None) -> list[dict]:
    """One row per component: name, host, state ("up" while RUNNING), supervisord's state, pid,
    seconds up, crashes (each followed by a restart), metrics URL, consumer lag."""
    crashes = read_counts(crashes_file)
    now = time.time() if now is None else now
    table = []
    for component in components:
        process = info.get(component.name, {})
        running = process.get("statename") == "RUNNING"
        consumer = component.kind in CONSUMERS
        table.append({
            "name": component.name, "host": host,
            "state": "up" if running else "down",
            "supervisor_state": process.get("statename", "UNKNOWN"),
            "pid": process.get("pid") or None if running else None,
            "uptime_s": int(now - process["start"]) if running else None,
            "restarts": crashes.get(component.name, 0),
            "metrics_url": component.metrics_url, "consumer": consumer,
            "lag": consumer_lag(component.metrics_url) if running and consumer else None})
    return table


def render(table: list[dict]) -> str:
    headers = ["NAME", "HOST", "STATE", "PID", "UP", "RESTARTS", "METRICS", "LAG"]
    lines = [[r["name"], r["host"], r["supervisor_state"], str(r["pid"] or "-"),
              _duration(r["uptime_s"]), str(r["restarts"]), r["metrics_url"] or "-",
              _lag_text(r)] for r in table]
    widths = [max(len(line[i]) for line in [headers, *lines]) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                     .rstrip() for line in [headers, *lines])


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(seconds, 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}"


def _lag_text(row: dict) -> str:
    if not row["consumer"] or row["state"] != "up":
        return "-"
    return "?" if row["lag"] is None else str(row["lag"])
