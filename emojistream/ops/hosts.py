"""A deployment over several hosts: which host runs which components, read from a TOML file
(TOPOLOGY_FILE), and the settings each host's components get from it (docs/deploy.md).

    [hosts.kafka1]
    address = "10.77.0.11"
    run = ["kafka_1"]

    [hosts.ws1]
    address = "10.77.0.31"
    run = ["ws_server_1", "subscriber_1_1", "subscriber_1_2", "cluster_publisher_1"]

Every component of the settings' table (components.py) runs on exactly one host, but for the
stateless ones (emoji_api, registration_api), which may run on several; spark_master and
spark_worker_N are optional (a standalone Spark cluster for the aggregator). Addresses are what
the other hosts connect to, and what the host's servers listen on.
"""

from __future__ import annotations

import base64
import hashlib
import tomllib
from dataclasses import dataclass

from emojistream.common.settings import ConfigError, SharedSettings

REPLICABLE = {"emoji_api", "registration_api"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
OPTIONAL = ("spark_master", "spark_worker_")


@dataclass(frozen=True)
class Hosts:
    """Host name -> its address, and host name -> the components it runs."""

    addresses: dict[str, str]
    runs: dict[str, tuple[str, ...]]

    def host_of(self, component: str) -> str | None:
        """The host that runs ``component`` (the first, for a replicable one), or None."""
        return next((h for h, names in self.runs.items() if component in names), None)

    def address_of(self, component: str) -> str | None:
        host = self.host_of(component)
        return None if host is None else self.addresses[host]


def load(path: str) -> Hosts:
    """The hosts of a topology file; ConfigError naming what is wrong."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"TOPOLOGY_FILE={path} cannot be read: {err}") from None
    hosts = data.get("hosts")
    if not isinstance(hosts, dict) or not hosts:
        raise ConfigError(f"{path} has no [hosts.NAME] tables")
    addresses, runs = {}, {}
    for name, table in hosts.items():
        if not (isinstance(table, dict) and isinstance(table.get("address"), str)
                and isinstance(table.get("run", []), list)):
            raise ConfigError(f"{path}: [hosts.{name}] needs address = \"...\" and run = [...]")
        addresses[name] = table["address"]
        runs[name] = tuple(str(component) for component in table.get("run", []))
    return Hosts(addresses, runs)


def check(hosts: Hosts, names: list[str], path: str) -> None:
    """Every component of ``names`` runs somewhere, and only the replicable ones more than once;
    no host runs a component that does not exist."""
    placed: dict[str, list[str]] = {}
    for host, components in hosts.runs.items():
        for component in components:
            if component not in names and not component.startswith(OPTIONAL):
                raise ConfigError(f"{path}: host {host} runs {component!r}, which is not a "
                                  f"component (they are: {', '.join(names)})")
            placed.setdefault(component, []).append(host)
    for name in names:
        where = placed.get(name, [])
        if not where and not name.startswith(OPTIONAL):
            raise ConfigError(f"{path}: no host runs {name}")
        if len(where) > 1 and name not in REPLICABLE:
            raise ConfigError(f"{path}: {name} runs on {', '.join(where)}; only "
                              f"{', '.join(sorted(REPLICABLE))} may run on several hosts")


def check_publish_listener(hosts: Hosts, settings: SharedSettings, path: str) -> None:
    """A WebSocket server's publish listener on loopback (WS_PUBLISH_HOST, the default) takes
    only subscribers of its own host: a subscriber placed elsewhere is refused here, not left
    to retry for ever."""
    if settings.ws_publish_host not in LOOPBACK_HOSTS:
        return
    for n in range(1, settings.cluster_count + 1):
        server = hosts.host_of(f"ws_server_{n}")
        for k in range(1, settings.subscribers_per_cluster + 1):
            where = hosts.host_of(f"subscriber_{n}_{k}")
            if where is not None and server is not None and where != server:
                raise ConfigError(
                    f"{path}: subscriber_{n}_{k} runs on {where}, ws_server_{n} on {server}, "
                    f"whose publish listener takes only its own host (WS_PUBLISH_HOST="
                    f"{settings.ws_publish_host}): run the subscribers next to their server, or "
                    "set WS_PUBLISH_HOST=0.0.0.0 with a firewall that keeps viewers off the "
                    "publish ports (docs/deploy.md)")


def environment(hosts: Hosts, host: str, settings: SharedSettings) -> dict[str, str]:
    """The settings that ``host``'s components get from the topology: where every other
    component is, and the host's own address to listen on."""
    if host not in hosts.addresses:
        raise ConfigError(f"no host {host!r} in the topology (hosts: "
                          f"{', '.join(hosts.addresses)})")
    address = hosts.addresses[host]
    brokers = broker_addresses(hosts)
    env = {
        "KAFKA_HOST": address, "API_HOST": address, "REGISTRATION_HOST": address,
        "WS_HOST": address, "METRICS_HOST": address, "SPARK_MASTER_HOST": address,
        "SPARK_WORKER_HOST": address,
        "KAFKA_BROKERS": str(len(brokers)),
        "KAFKA_BOOTSTRAP_SERVERS": ",".join(f"{a}:{settings.kafka_port}" for a in brokers),
        "KAFKA_VOTERS": ",".join(f"{k}@{a}:{settings.kafka_controller_port}"
                                 for k, a in enumerate(brokers, start=1)),
        "KAFKA_CLUSTER_ID": cluster_id(brokers),
        "WS_CLUSTER_HOSTS": ",".join(_required(hosts, f"ws_server_{n}")
                                     for n in range(1, settings.cluster_count + 1)),
    }
    # The page (served by every registration host) posts to an ingest host: by default the
    # first, and the ingest hosts take posts from every registration host's page.
    if not getattr(settings, "api_public_url", ""):
        env["API_PUBLIC_URL"] = f"http://{_required(hosts, 'emoji_api')}:{settings.api_port}"
    if not getattr(settings, "api_cors_origins", ""):
        env["API_CORS_ORIGINS"] = ",".join(
            f"http://{hosts.addresses[h]}:{settings.registration_port}"
            for h, names in hosts.runs.items() if "registration_api" in names)
    master = hosts.address_of("spark_master")
    if master is not None:
        env["SPARK_MASTER"] = f"spark://{master}:{_spark_master_port(settings)}"
        env["SPARK_MASTER_HOST"] = master
        env["SPARK_DRIVER_HOST"] = _required(hosts, "spark_aggregator")
    return env


def broker_addresses(hosts: Hosts) -> list[str]:
    """The address of broker 1, 2, ... (kafka_1, kafka_2, ...; or the one broker "kafka")."""
    found: list[str] = []
    while (address := hosts.address_of(f"kafka_{len(found) + 1}")) is not None:
        found.append(address)
    single = hosts.address_of("kafka")
    if single is not None and not found:
        found = [single]
    if not found:
        raise ConfigError("the topology runs no kafka_1")
    return found


def _required(hosts: Hosts, component: str) -> str:
    address = hosts.address_of(component)
    if address is None:
        raise ConfigError(f"the topology runs no {component}")
    return address


def _spark_master_port(settings: SharedSettings) -> int:
    return int(getattr(settings, "spark_master_port", 7077))


def cluster_id(brokers: list[str]) -> str:
    """The Kafka cluster id every broker of the topology formats its storage with: the same on
    every host, without a shared file (Kafka wants 16 bytes in URL-safe base64)."""
    digest = hashlib.sha256(",".join(brokers).encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
