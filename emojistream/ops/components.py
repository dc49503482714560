"""The one table of the system's components: what each runs, where, on which ports, how to tell
it is ready, where its metrics are, and in which order they start (they stop in reverse).

Start, stop and status (supervise.py), the Prometheus configuration, the benchmarks and the tests
all read it. Without a topology file every component runs on one host, "local"; a topology file
(TOPOLOGY_FILE, hosts.py) spreads them over hosts by address (docs/deploy.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from emojistream import topology
from emojistream.common import urls
from emojistream.common.settings import load_from, to_environment
from emojistream.config import Settings
from emojistream.ops import hosts

LOCAL = "local"
# Start order; a component stops after every component that starts later than it.
ORDER = {"kafka": 0, "spark_master": 1, "spark_worker": 2, "spark_aggregator": 10,
         "ws_server": 20, "registration_api": 30, "subscriber": 40, "cluster_publisher": 50,
         "main_publisher": 60, "emoji_api": 70}


@dataclass(frozen=True)
class Component:
    name: str                 # unique on its host: kafka_2, ws_server_1, subscriber_1_2, ...
    kind: str                 # its Prometheus job: kafka, ws_server, subscriber, ...
    command: tuple[str, ...]  # relative to the repository; "python" is the project's .venv's
    host: str                 # the host it runs on (LOCAL without a topology file)
    ports: tuple[int, ...]    # what it listens on
    ready: str                # http://... answers 200 (metrics: emojistream_ready 1), tcp://...
    metrics_url: str
    cluster: int | None = None

    @property
    def order(self) -> int:
        return ORDER[self.kind]


def _url(host: str, port: int, path: str = "") -> str:
    return urls.http_url(host, port) + path


def _broker_names(settings: Settings) -> list[str]:
    return (["kafka"] if settings.kafka_brokers == 1
            else [f"kafka_{k}" for k in range(1, settings.kafka_brokers + 1)])


def components(settings: Settings, host: str = LOCAL, spark_cluster: bool = False,
               only: set[str] | None = None) -> list[Component]:
    """The components of ``settings`` as they run on ``host`` (all of them, or ``only`` these
    names), in start order. ``spark_cluster`` adds a standalone Spark master and workers."""
    s, found = settings, []
    metrics_ports = topology.kafka_metrics_ports(s)
    for k, name in enumerate(_broker_names(s), start=1):
        # With KAFKA_VOTERS each broker has a host of its own: no port steps.
        step = 0 if s.kafka_voters else (k - 1) * s.kafka_port_step
        port = s.kafka_port + step
        metrics = _url(s.kafka_host, metrics_ports[k - 1], "/metrics") if metrics_ports else ""
        found.append(Component(name, "kafka", ("scripts/kafka.sh", "run", str(k)), host,
                               (port, s.kafka_controller_port + step),
                               f"tcp://{urls.host_port(urls.reachable(s.kafka_host), port)}",
                               metrics))
    if spark_cluster:
        found.append(Component("spark_master", "spark_master",
                               ("scripts/spark_cluster.sh", "run", "master"), host,
                               (s.spark_master_port, s.spark_master_webui_port),
                               f"tcp://{urls.host_port(s.spark_master_host, s.spark_master_port)}",
                               ""))
        for n in range(1, s.spark_workers + 1):
            ui = s.spark_worker_webui_port + n - 1
            found.append(Component(f"spark_worker_{n}", "spark_worker",
                                   ("scripts/spark_cluster.sh", "run", "worker", str(n)), host,
                                   (ui,), f"tcp://{urls.host_port(s.spark_ui_host, ui)}", ""))
    found.append(_metered("spark_aggregator", ("spark_aggregator.py",), host,
                          topology.aggregator_metrics_port(s), s))
    for n in s.clusters:
        port, publish_port = topology.ws_port(s, n), topology.ws_publish_port(s, n)
        address = urls.reachable(topology.ws_cluster_host(s, n))
        if s.ws_tls_cert:  # the viewers' port speaks TLS: health and metrics over the other
            address, port = topology.ws_publish_address(s, n), publish_port
        found.append(Component(f"ws_server_{n}", "ws_server",
                               ("ws_server.py", "--cluster", str(n)), host,
                               (topology.ws_port(s, n), publish_port),
                               _url(address, port, "/health"), _url(address, port, "/metrics"),
                               n))
    found.append(Component("registration_api", "registration_api", ("registration_api.py",),
                           host, (s.registration_port,),
                           _url(s.registration_host, s.registration_port, "/health"),
                           _url(s.registration_host, s.registration_port, "/metrics")))
    for n in s.clusters:
        for k in range(1, s.subscribers_per_cluster + 1):
            found.append(_metered(f"subscriber_{n}_{k}",
                                  ("subscriber.py", "--cluster", str(n), "--id", str(k)), host,
                                  topology.subscriber_metrics_port(s, n, k), s, n))
        found.append(_metered(f"cluster_publisher_{n}", ("cluster_publisher.py", "--cluster",
                                                          str(n)), host,
                              topology.cluster_publisher_metrics_port(s, n), s, n))
    found.append(_metered("main_publisher", ("main_publisher.py",), host,
                          topology.main_publisher_metrics_port(s), s))
    found.append(Component("emoji_api", "emoji_api", ("emoji_api.py",), host, (s.api_port,),
                           _url(s.api_host, s.api_port, "/health"),
                           _url(s.api_host, s.api_port, "/metrics")))
    chosen = [c for c in found if only is None or c.name in only]
    return sorted(chosen, key=lambda c: c.order)


def _metered(name: str, command: tuple[str, ...], host: str, port: int, s: Settings,
             cluster: int | None = None) -> Component:
    """A component that serves only its metrics: ready once they say emojistream_ready 1."""
    metrics = _url(s.metrics_host, port, "/metrics")
    kind = name.rstrip("_0123456789") if cluster is not None else name
    return Component(name, kind, command, host, (port,), metrics, metrics, cluster)


def deployment(settings: Settings) -> list[tuple[str, Settings, list[Component]]]:
    """(host, its settings, its components) of every host: the topology file's, or the one
    host LOCAL running everything (the standalone Spark cluster only where placed)."""
    if not settings.topology_file:
        return [(LOCAL, settings, components(settings))]
    placed = hosts.load(settings.topology_file)
    found = []
    for host in placed.addresses:
        env = hosts.environment(placed, host, settings)
        host_settings = load_from(Settings, {**to_environment(settings), **env})
        every = components(host_settings, host, spark_cluster=True)
        hosts.check(placed, [c.name for c in every], settings.topology_file)
        found.append((host, host_settings, [c for c in every if c.name in placed.runs[host]]))
    hosts.check_publish_listener(placed, settings, settings.topology_file)
    return found
