"""Where each component is, derived from the settings: ports, URLs, origins, replicas.

Every address a component needs of another comes from here, so that no two places compute the
same port. Standard library only (the shell scripts use it through emojistream.config).
"""

from __future__ import annotations

import socket

from emojistream.common import urls
from emojistream.common.settings import SharedSettings


def local_kafka_ports(settings: SharedSettings) -> list[int]:
    """The client ports of the KAFKA_BROKERS local brokers of scripts/kafka.sh."""
    return [settings.kafka_port + i * settings.kafka_port_step
            for i in range(settings.kafka_brokers)]


def kafka_metrics_ports(settings: SharedSettings) -> list[int]:
    """The JMX exporter's port of each local broker (none when KAFKA_METRICS_PORT is 0)."""
    if not settings.kafka_metrics_port:
        return []
    return [settings.kafka_metrics_port + i for i in range(settings.kafka_brokers)]


def topic_replicas(settings: SharedSettings, brokers: int) -> int:
    """Replicas of every topic on a cluster of ``brokers``: REPLICATION_FACTOR, or min(3,
    brokers)."""
    return settings.replication_factor or min(3, brokers)


def topic_min_insync(settings: SharedSettings, replicas: int) -> int | None:
    """min.insync.replicas of a topic that must not lose a write: MIN_INSYNC_REPLICAS, or 2 for
    3 or more replicas (one broker may be lost while acks=all writes go on), else None (the
    broker's default, 1)."""
    if settings.min_insync_replicas:
        return settings.min_insync_replicas
    return 2 if replicas >= 3 else None


# --- WebSocket servers --------------------------------------------------------------------------

def ws_port(settings: SharedSettings, n: int) -> int:
    """The port of cluster N's WebSocket server."""
    return settings.ws_first_port + n - 1


def ws_cluster_host(settings: SharedSettings, n: int) -> str:
    """The host name of cluster N's WebSocket server (WS_CLUSTER_HOSTS, else WS_HOST)."""
    hosts = [h.strip() for h in settings.ws_cluster_hosts.split(",") if h.strip()]
    return hosts[n - 1] if hosts else settings.ws_host


def ws_public_url(settings: SharedSettings, n: int) -> str:
    """What cluster N's viewers are told to connect to."""
    return settings.ws_public_url_template.format(host=ws_cluster_host(settings, n),
                                                  port=ws_port(settings, n), n=n)


def ws_health_url(settings: SharedSettings, n: int) -> str:
    """Where the registration API polls cluster N's server."""
    host = urls.bracketed(urls.reachable(ws_cluster_host(settings, n)))
    return settings.ws_health_url_template.format(host=host, port=ws_port(settings, n), n=n)


def ws_publish_port(settings: SharedSettings, n: int) -> int:
    """The port of cluster N's publish listener (its subscribers' only way in):
    WS_PUBLISH_FIRST_PORT + N - 1, by default right after every cluster's viewers' port."""
    first = settings.ws_publish_first_port or settings.ws_first_port + settings.cluster_count
    return first + n - 1


def ws_publish_address(settings: SharedSettings, n: int) -> str:
    """Where cluster N's subscribers reach its publish listener: WS_PUBLISH_HOST, or the
    cluster's host when that listener takes every interface (0.0.0.0, ::)."""
    if settings.ws_publish_host in urls.WILDCARD_HOSTS:
        return urls.reachable(ws_cluster_host(settings, n))
    return settings.ws_publish_host


def ws_publish_url(settings: SharedSettings, n: int) -> str:
    """Where cluster N's subscribers hand updates to its WebSocket server."""
    return urls.ws_url(ws_publish_address(settings, n), ws_publish_port(settings, n), "/publish")


# --- HTTP APIs and the page -------------------------------------------------------------------

def api_url(settings: SharedSettings) -> str:
    """The ingest API's URL for browsers (API_PUBLIC_URL, or from API_HOST and API_PORT)."""
    return (settings.api_public_url
            or urls.http_url(settings.api_host, settings.api_port)).rstrip("/")


def registration_url(settings: SharedSettings) -> str:
    """The registration API's (and the web page's) URL for browsers."""
    return (settings.registration_public_url
            or urls.http_url(settings.registration_host, settings.registration_port)).rstrip("/")


def cors_origins(settings: SharedSettings, configured: str = "") -> tuple[str, ...]:
    """The origins whose pages may call the ingest API: ``configured`` (API_CORS_ORIGINS), else
    the registration API's page: REGISTRATION_PUBLIC_URL's origin, else REGISTRATION_HOST's
    (as localhost and 127.0.0.1 when local; when it listens on every interface, also as this
    machine's host names, by which other machines open the page). ("*",) for any."""
    if configured.strip():
        return tuple(o.strip().rstrip("/") for o in configured.split(",") if o.strip())
    if settings.registration_public_url:
        return (urls.origin(settings.registration_public_url),)
    if settings.registration_host in urls.LOCAL_HOSTS:
        hosts = ["localhost", "127.0.0.1"]
        if settings.registration_host in urls.WILDCARD_HOSTS:
            hosts += [name.lower() for name in (socket.gethostname(), socket.getfqdn())]
        return tuple(urls.http_url(host, settings.registration_port)
                     for host in dict.fromkeys(hosts))
    return (urls.http_url(settings.registration_host, settings.registration_port),)


# --- metrics of the processes that only talk to Kafka -----------------------------------------

def aggregator_metrics_port(settings: SharedSettings) -> int:
    return settings.metrics_first_port


def main_publisher_metrics_port(settings: SharedSettings) -> int:
    return settings.metrics_first_port + 1


def cluster_publisher_metrics_port(settings: SharedSettings, n: int) -> int:
    return settings.metrics_first_port + 1 + n


def subscriber_metrics_port(settings: SharedSettings, n: int, k: int) -> int:
    """Cluster N's subscriber K: after every cluster publisher's port, so no two collide."""
    return (settings.metrics_first_port + 1 + settings.cluster_count
            + (n - 1) * settings.subscribers_per_cluster + k)


def metrics_port_count(settings: SharedSettings) -> int:
    """How many ports from METRICS_FIRST_PORT the Kafka-only processes take."""
    return 2 + settings.cluster_count * (1 + settings.subscribers_per_cluster)
