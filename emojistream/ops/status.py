"""What scripts/status.sh shows: every component of the system, whether it runs, where its
metrics are, and for the Kafka consumers their lag (read from their own /metrics).

    python -m emojistream.ops.status --components      NAME PID_FILE lines, for status.sh
    python -m emojistream.ops.status [--json] NAME=PID...  the table (PID: "-" when not running)

Whether a component runs is decided by status.sh with the pid files' identity check
(scripts/common.sh: pid_of), never here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass

from prometheus_client.parser import text_string_to_metric_families

from emojistream import topology
from emojistream.common import urls
from emojistream.common.lifecycle import load_settings
from emojistream.common.settings import SharedSettings

LAG_METRIC = "emojistream_consumer_lag"
SCRAPE_TIMEOUT_S = 2.0


@dataclass
class Component:
    name: str
    pid_file: str
    metrics_url: str
    consumer: bool = False


def components(settings: SharedSettings) -> list[Component]:
    """Every component start_all.sh starts, and the local Kafka brokers, in start order."""
    run = settings.var_path / "run"

    def url(host: str, port: int) -> str:
        return urls.http_url(urls.reachable(host), port) + "/metrics"

    found = [_broker(settings, k, url) for k in range(1, settings.kafka_brokers + 1)]
    found.append(Component("spark_aggregator", str(run / "spark_aggregator.pid"),
                           url(settings.metrics_host, topology.aggregator_metrics_port(settings))))
    for n in settings.clusters:
        found.append(Component(f"ws_server_{n}", str(run / f"ws_server_{n}.pid"),
                               url(topology.ws_cluster_host(settings, n),
                                   topology.ws_port(settings, n))))
    found.append(Component("registration_api", str(run / "registration_api.pid"),
                           url(settings.registration_host, settings.registration_port)))
    for n in settings.clusters:
        for k in range(1, settings.subscribers_per_cluster + 1):
            found.append(Component(
                f"subscriber_{n}_{k}", str(run / f"subscriber_{n}_{k}.pid"),
                url(settings.metrics_host, topology.subscriber_metrics_port(settings, n, k)), True))
        found.append(Component(
            f"cluster_publisher_{n}", str(run / f"cluster_publisher_{n}.pid"),
            url(settings.metrics_host, topology.cluster_publisher_metrics_port(settings, n)), True))
    found.append(Component("main_publisher", str(run / "main_publisher.pid"),
                           url(settings.metrics_host,
                               topology.main_publisher_metrics_port(settings)), True))
    found.append(Component("emoji_api", str(run / "emoji_api.pid"),
                           url(settings.api_host, settings.api_port)))
    return found


def _broker(settings: SharedSettings, k: int, url) -> Component:
    kafka_dir = settings.var_path / "kafka"
    single = settings.kafka_brokers == 1
    pid_file = kafka_dir / "kafka.pid" if single else kafka_dir / f"broker-{k}" / "kafka.pid"
    ports = topology.kafka_metrics_ports(settings)
    metrics_url = url(settings.kafka_host, ports[k - 1]) if ports else ""
    return Component("kafka" if single else f"kafka_{k}", str(pid_file), metrics_url)


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


def rows(settings: SharedSettings, pids: dict[str, str]) -> list[dict]:
    """One row per component: name, pid (None when down), state, metrics URL, lag."""
    table = []
    for component in components(settings):
        pid = pids.get(component.name, "-")
        up = pid.isdigit()
        row = {**asdict(component), "pid": int(pid) if up else None,
               "state": "up" if up else "down", "lag": None}
        if up and component.consumer:
            row["lag"] = consumer_lag(component.metrics_url)
        table.append(row)
    return table


def render(table: list[dict]) -> str:
    headers = ["NAME", "PID", "STATE", "METRICS", "LAG"]
    lines = [[r["name"], str(r["pid"] or "-"), r["state"], r["metrics_url"] or "-",
              _lag_text(r)] for r in table]
    widths = [max(len(line[i]) for line in [headers, *lines]) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                     .rstrip() for line in [headers, *lines])


def _lag_text(row: dict) -> str:
    if not row["consumer"] or row["state"] != "up":
        return "-"
    return "?" if row["lag"] is None else str(row["lag"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emojistream.ops.status",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--components", action="store_true",
                        help="print NAME PID_FILE of every component and exit")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("pids", nargs="*", metavar="NAME=PID")
    args = parser.parse_args(argv)
    settings = load_settings(logging.getLogger(__name__), SharedSettings)
    if args.components:
        for component in components(settings):
            print(component.name, component.pid_file)
        return 0
    table = rows(settings, dict(pair.split("=", 1) for pair in args.pids))
    for row in table:
        del row["pid_file"]
    print(json.dumps(table, indent=2) if args.json else render(table))
    return 0 if all(row["state"] == "up" for row in table) else 1


if __name__ == "__main__":
    sys.exit(main())
