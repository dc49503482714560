"""Settings: what every component reads (here), and how settings load from the environment.

Each component has a settings class of its own (``IngestSettings`` in emojistream/ingest/, ...):
``SharedSettings`` plus the fields that component alone reads. A field's environment variable
is its name in upper case. What each setting means, at length: docs/operations.md#settings.
Standard library only: the shell scripts read the settings with the system's python3.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

from emojistream.common.urls import host_port

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_EMOJIS = "😀,😍,🎉,👏,❤️,🏏,🎯,🔥,😂,😮,😢,😡"
WS_KEEPALIVE_MIN_S = 1.0
# The ingest API's producer needs a few seconds of it (emojistream/ingest/sink.py).
MIN_INGEST_DELIVERY_TIMEOUT_S = 2.0
# A stream id: what STREAMS, events and registrations may name.
STREAM_ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class ConfigError(ValueError):
    """A setting from the environment has a value of the wrong kind."""


@dataclass(frozen=True)
class SharedSettings:
    """What every component reads: where things are, Kafka, topics, streams, events, secrets."""

    var_dir: str = str(REPO_ROOT / "var")  # data, logs, checkpoints, secrets

    # Kafka: the local brokers of scripts/kafka.sh, and what every client connects to.
    kafka_host: str = "localhost"
    kafka_port: int = 9092  # broker N: KAFKA_PORT + (N-1) * KAFKA_PORT_STEP
    kafka_controller_port: int = 9093  # controller N: likewise
    kafka_brokers: int = 1
    kafka_port_step: int = 2
    kafka_bootstrap_servers: str = ""  # empty: the local brokers
    kafka_security_protocol: str = "PLAINTEXT"  # SSL, SASL_PLAINTEXT, SASL_SSL
    kafka_sasl_mechanism: str = ""  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: str = ""  # PEM files
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    kafka_ssl_key_password: str = ""
    kafka_ssl_check_hostname: bool = True
    kafka_delivery_timeout_s: float = 120.0  # a producer's retries of one record

    # Topics ("{n}": the cluster number).
    emoji_events_topic: str = "emoji-events"
    aggregated_topic: str = "aggregated-emoji-topic"
    cluster_topic_template: str = "cluster{n}-topic"
    subscribers_topic_template: str = "cluster{n}-topic-subscribers"
    subscriber_group_template: str = "cluster{n}-subscriber-{k}"  # "{k}": the subscriber's --id
    streams_topic: str = "streams"  # the catalog of streams added at run time (compacted)
    cluster_count: int = 3
    subscribers_per_cluster: int = 2
    emoji_events_partitions: int = 2  # as many as the aggregator's cores (README: Kafka topics)
    topic_partitions: int = 1
    replication_factor: int = 0  # 0: min(3, brokers)
    min_insync_replicas: int = 0  # 0: 2 with 3 or more replicas, else the broker's default
    # aggregated-emoji-topic is the system of record of the windows (GET /streams/ID/windows):
    # compacted on its STREAM/WINDOW_START key (each window's last update stays) and deleted
    # past a week or 1 GiB per partition, whichever comes first; segments roll every hour,
    # so compaction can drop the running versions of a window an hour on.
    aggregated_retention_s: int = 7 * 24 * 3600
    aggregated_retention_bytes: int = 1 << 30  # per partition; -1: no size limit
    aggregated_segment_s: int = 3600

    # Where the servers listen (emojistream/topology.py derives their URLs).
    api_host: str = "localhost"
    api_port: int = 5000
    registration_host: str = "localhost"
    registration_port: int = 5001
    ws_host: str = "localhost"
    ws_first_port: int = 5002  # cluster N: WS_FIRST_PORT + N - 1
    ws_cluster_hosts: str = ""  # cluster N's host: the N-th of this list; empty: WS_HOST
    # The subscribers' listener of every WebSocket server (/publish), apart from the viewers':
    # loopback by default (subscribers next to their server); 0.0.0.0 or the address of a
    # network the subscribers reach and viewers do not, when they run elsewhere.
    ws_publish_host: str = "127.0.0.1"
    ws_publish_first_port: int = 0  # cluster N: +N-1; 0: WS_FIRST_PORT + CLUSTER_COUNT
    ws_public_url_template: str = "ws://{host}:{port}/"  # what viewers connect to
    api_public_url: str = ""  # the ingest API as browsers reach it; empty: API_HOST:API_PORT
    registration_public_url: str = ""  # the page's origin; empty: where it was loaded from
    ws_health_url_template: str = "http://{host}:{port}/health"
    metrics_host: str = "localhost"  # the Kafka-only processes' metrics
    metrics_first_port: int = 9310
    kafka_metrics_port: int = 9404  # broker K's JMX exporter: +K-1 (0: none)

    # Streams, events and windows.
    streams: str = "main"  # always known; more are added through POST /streams
    emojis: str = DEFAULT_EMOJIS
    window_seconds: int = 2
    watermark_delay_s: int = 40
    max_event_age_s: float = 3.0
    max_event_future_s: float = 5.0
    event_time_margin_s: float = 1.0
    # The ingest API's promise: an event it answered 200 for is in Kafka within this long of its
    # receipt, or counted lost (emojistream_api_events_lost_total); it bounds the API's
    # producer retries (a broker failover), and the watermark must wait for it (below).
    ingest_delivery_timeout_s: float = 30.0
    # Moments (common/moments.py): a window whose total exceeds MOMENT_FACTOR times the median
    # total of the stream's windows of the MOMENT_LOOKBACK_S before it (at least
    # MOMENT_MIN_WINDOWS of them with reactions).
    moment_factor: float = 3.0
    moment_lookback_s: int = 60
    moment_min_windows: int = 5

    # Secrets (empty: the files generated in VAR_DIR/secrets) and the WebSocket keepalive.
    token_secret: str = ""
    subscriber_key: str = ""
    admin_key: str = ""
    ws_ping_interval_s: float = 10.0
    ws_ping_timeout_s: float = 10.0
    # Refused clients are logged as one line of counts per interval (common/refusals.py).
    refusals_log_interval_s: float = 10.0

    def __post_init__(self):
        if not self.kafka_bootstrap_servers:
            object.__setattr__(self, "kafka_bootstrap_servers", ",".join(
                host_port(self.kafka_host, self.kafka_port + i * self.kafka_port_step)
                for i in range(self.kafka_brokers)))
        self._check_kafka_security()
        self._check_local_kafka_ports()
        self._check_event_time_limits()
        if not self.stream_ids or not all(STREAM_ID.fullmatch(s) for s in self.stream_ids):
            raise ConfigError(f"STREAMS must list stream ids of 1 to 64 characters from "
                              f"[A-Za-z0-9._-], got {self.streams!r}")
        if min(self.ws_ping_interval_s, self.ws_ping_timeout_s) < WS_KEEPALIVE_MIN_S:
            raise ConfigError(f"WS_PING_INTERVAL_S and WS_PING_TIMEOUT_S must be at least "
                              f"{WS_KEEPALIVE_MIN_S:g} s (the keepalive frees the connections of "
                              f"vanished viewers), got {self.ws_ping_interval_s:g} and "
                              f"{self.ws_ping_timeout_s:g}")
        self._check_ws_ports()
        self._check_history()
        if self.refusals_log_interval_s <= 0:
            raise ConfigError(f"REFUSALS_LOG_INTERVAL_S must be more than 0, got "
                              f"{self.refusals_log_interval_s:g}")
        hosts = [h for h in self.ws_cluster_hosts.split(",") if h.strip()]
        if hosts and len(hosts) < self.cluster_count:
            raise ConfigError(f"WS_CLUSTER_HOSTS names {len(hosts)} host(s); cluster "
                              f"{self.cluster_count} has none")

    def _check_local_kafka_ports(self) -> None:
        if self.kafka_brokers < 1:
            raise ConfigError(f"KAFKA_BROKERS must be at least 1, got {self.kafka_brokers}")
        step = self.kafka_port_step
        ports = [first + i * step for first in (self.kafka_port, self.kafka_controller_port)
                 for i in range(self.kafka_brokers)]
        if len(set(ports)) != len(ports):
            raise ConfigError(f"the {self.kafka_brokers} local brokers' ports overlap: brokers on "
                              f"KAFKA_PORT={self.kafka_port} + (N-1) * KAFKA_PORT_STEP={step}, "
                              f"controllers on KAFKA_CONTROLLER_PORT={self.kafka_controller_port} "
                              "+ (N-1) * KAFKA_PORT_STEP")

    def _check_history(self) -> None:
        if self.moment_factor <= 0 or self.moment_lookback_s < self.window_seconds \
                or self.moment_min_windows < 1:
            raise ConfigError(f"MOMENT_FACTOR must be more than 0, MOMENT_LOOKBACK_S at least "
                              f"WINDOW_SECONDS ({self.window_seconds}) and MOMENT_MIN_WINDOWS at "
                              f"least 1; got {self.moment_factor:g}, {self.moment_lookback_s} "
                              f"and {self.moment_min_windows}")
        if self.aggregated_retention_s <= 0 or self.aggregated_segment_s <= 0 \
                or self.aggregated_retention_bytes == 0 or self.aggregated_retention_bytes < -1:
            raise ConfigError("AGGREGATED_RETENTION_S and AGGREGATED_SEGMENT_S must be more than "
                              "0, AGGREGATED_RETENTION_BYTES more than 0 or -1 (no size limit)")

    def _check_ws_ports(self) -> None:
        viewers = range(self.ws_first_port, self.ws_first_port + self.cluster_count)
        first = self.ws_publish_first_port or viewers.stop
        if set(viewers) & set(range(first, first + self.cluster_count)):
            raise ConfigError(f"the WebSocket servers' publish ports (WS_PUBLISH_FIRST_PORT="
                              f"{first} + N - 1) overlap their viewers' ports (WS_FIRST_PORT="
                              f"{self.ws_first_port} + N - 1, {self.cluster_count} clusters)")

    def _check_event_time_limits(self) -> None:
        if min(self.max_event_age_s, self.max_event_future_s, self.event_time_margin_s) < 0:
            raise ConfigError("MAX_EVENT_AGE_S, MAX_EVENT_FUTURE_S and EVENT_TIME_MARGIN_S must "
                              "not be negative")
        if self.ingest_delivery_timeout_s < MIN_INGEST_DELIVERY_TIMEOUT_S:
            raise ConfigError(f"INGEST_DELIVERY_TIMEOUT_S must be at least "
                              f"{MIN_INGEST_DELIVERY_TIMEOUT_S:g} s, got "
                              f"{self.ingest_delivery_timeout_s:g}")
        spread = (self.max_event_age_s + self.max_event_future_s + 2 * self.event_time_margin_s
                  + self.ingest_delivery_timeout_s)
        if spread > self.watermark_delay_s:
            raise ConfigError(
                f"MAX_EVENT_AGE_S + MAX_EVENT_FUTURE_S + 2 x EVENT_TIME_MARGIN_S + "
                f"INGEST_DELIVERY_TIMEOUT_S ({self.max_event_age_s:g} + "
                f"{self.max_event_future_s:g} + 2 x {self.event_time_margin_s:g} + "
                f"{self.ingest_delivery_timeout_s:g} = {spread:g} s) must not exceed "
                f"WATERMARK_DELAY_S ({self.watermark_delay_s} s), or an event the ingest API "
                "accepted and delivered within its delivery timeout could reach the aggregator "
                "after the watermark passed its window: raise WATERMARK_DELAY_S or lower the "
                "others (docs/operations.md#event-time-and-delivery)")

    def _check_kafka_security(self) -> None:
        protocol = self.kafka_security_protocol.upper()
        if protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ConfigError("KAFKA_SECURITY_PROTOCOL must be one of "
                              f"{', '.join(KAFKA_SECURITY_PROTOCOLS)}, got "
                              f"{self.kafka_security_protocol!r}")
        if protocol.startswith("SASL_"):
            if self.kafka_sasl_mechanism.upper() not in KAFKA_SASL_MECHANISMS:
                raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_MECHANISM,"
                                  f" one of {', '.join(KAFKA_SASL_MECHANISMS)}; got "
                                  f"{self.kafka_sasl_mechanism!r}")
            if not self.kafka_sasl_username or not self.kafka_sasl_password:
                raise ConfigError(f"KAFKA_SASL_MECHANISM={self.kafka_sasl_mechanism} needs "
                                  "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ConfigError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together "
                              "(the client's certificate and key for mutual TLS)")

    def cluster_topic(self, n: int) -> str:
        return self.cluster_topic_template.format(n=n)

    def subscribers_topic(self, n: int) -> str:
        return self.subscribers_topic_template.format(n=n)

    def subscriber_group(self, n: int, k: int) -> str:
        return self.subscriber_group_template.format(n=n, k=k)

    def ws_keepalive(self) -> dict:
        """websockets' keepalive arguments (heartbeats), for servers and clients alike."""
        return {"ping_interval": self.ws_ping_interval_s, "ping_timeout": self.ws_ping_timeout_s}

    @property
    def stream_ids(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.streams.split(",") if s.strip())

    @property
    def allowed_emojis(self) -> tuple[str, ...]:
        return tuple(e.strip() for e in self.emojis.split(",") if e.strip())

    @property
    def clusters(self) -> range:
        return range(1, self.cluster_count + 1)

    @property
    def var_path(self) -> Path:
        return Path(self.var_dir)


# --- loading --------------------------------------------------------------------------------

S = TypeVar("S", bound=SharedSettings)

# Settings renamed: the old name in the environment is refused with the new one's name.
RENAMED = {"WS_BASE_PORT": "WS_FIRST_PORT (cluster N's WebSocket server listens on "
                           "WS_FIRST_PORT + N - 1: WS_BASE_PORT + 1)"}
BOOLEANS = {"true": True, "1": True, "yes": True, "on": True,
            "false": False, "0": False, "no": False, "off": False}


def env_name(field) -> str:
    """The environment variable of a settings field: its name in upper case."""
    return field.name.upper()


def _convert(raw: str, kind, name: str):
    if kind in (bool, "bool"):
        try:
            return BOOLEANS[raw.strip().lower()]
        except KeyError:
            raise ConfigError(f"{name} must be true or false, got {raw!r}") from None
    for number, what in ((int, "an integer"), (float, "a number")):
        if kind in (number, number.__name__):
            try:
                return number(raw)
            except ValueError:
                raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    return raw


def load_from(cls: type[S], environ=None, **overrides) -> S:
    """``cls`` from its defaults, then the environment, then explicit ``overrides``."""
    environ = os.environ if environ is None else environ
    for old, new in RENAMED.items():
        if old in environ:
            raise ConfigError(f"{old} is no longer read; set {new}")
    values = {f.name: _convert(environ[env_name(f)], f.type, env_name(f))
              for f in fields(cls) if env_name(f) in environ}
    values.update(overrides)
    return cls(**values)


def to_environment(settings: SharedSettings) -> dict[str, str]:
    """The environment variables that load the same settings again (a process that starts
    others hands its settings down this way)."""
    return {env_name(f): _text(getattr(settings, f.name)) for f in fields(settings)}


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
