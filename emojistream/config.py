"""The one configuration module: every host, port, topic, path and tuning knob of the system.

Each setting is a field of ``Settings`` with its default; the environment variable of the same
name in upper case overrides it (``ws_first_port``: ``WS_FIRST_PORT``). Shell scripts read the
same values with ``python3 -m emojistream.config --shell``, so there is exactly one place where
defaults live. Settings marked "(scripts only)" are read by the shell scripts alone.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from emojistream.common import urls

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_EMOJIS = "😀,😍,🎉,👏,❤️,🏏,🎯,🔥,😂,😮,😢,😡"


@dataclass(frozen=True)
class Settings:
    # Where the project keeps its data, logs and pid files.
    var_dir: str = str(REPO_ROOT / "var")

    # Kafka.  KAFKA_BOOTSTRAP_SERVERS is what every client uses (comma-separated host:port
    # list). When it is empty, it lists the local brokers that scripts/kafka.sh starts:
    # KAFKA_BROKERS of them (1, or 3 for a replicated cluster), broker N listening on KAFKA_HOST at
    # KAFKA_PORT + (N-1) * KAFKA_PORT_STEP, its controller at KAFKA_CONTROLLER_PORT + (N-1) *
    # KAFKA_PORT_STEP.
    kafka_host: str = "localhost"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_brokers: int = 1
    kafka_port_step: int = 2
    kafka_bootstrap_servers: str = ""
    # (scripts only) The heap of each local broker; KAFKA_HOME: an existing Kafka distribution
    # to run instead of the jars setup fetched into lib/kafka.
    kafka_heap: str = "1g"
    kafka_home: str = ""
    # Kafka client security, passed to every kafka-python client (emojistream/common/kafka_clients.py)
    # and to Spark's Kafka source and sink (emojistream/aggregator/spark.py). KAFKA_SECURITY_PROTOCOL is
    # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; KAFKA_SASL_MECHANISM is PLAIN, SCRAM-SHA-256
    # or SCRAM-SHA-512 (with KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD). The TLS files are PEM:
    # the CA that signed the brokers' certificates, and for mutual TLS the client's certificate
    # and key (KAFKA_SSL_KEY_PASSWORD when the key is encrypted).
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    kafka_ssl_key_password: str = ""
    # Verify that a broker's certificate names the host connected to (false to skip).
    kafka_ssl_check_hostname: bool = True

    # Topics.  "{n}" in a cluster topic template is the cluster number (1-based).
    emoji_events_topic: str = "emoji-events"
    aggregated_topic: str = "aggregated-emoji-topic"
    cluster_topic_template: str = "cluster{n}-topic"
    subscribers_topic_template: str = "cluster{n}-topic-subscribers"
    cluster_count: int = 3
    # The catalog of live streams added at run time (compacted; emojistream/common/streams.py).
    streams_topic: str = "streams"
    emoji_events_partitions: int = 4
    topic_partitions: int = 1
    # Replicas of every topic; 0: min(3, the number of brokers the cluster has).
    replication_factor: int = 0
    # min.insync.replicas of the events and aggregates topics (with the producers' acks=all, a
    # write succeeds once this many replicas have it); 0: 2 when a topic has 3 or more replicas,
    # else the broker's default (1).
    min_insync_replicas: int = 0

    # Spark. SPARK_MASTER is where spark_aggregator.py runs: local[*] in its own process, or a
    # standalone cluster's spark://host:port (scripts/spark_cluster.sh starts one here, with its
    # master on SPARK_MASTER_HOST:SPARK_MASTER_PORT).
    spark_master: str = "local[*]"
    # The address executors use to reach the driver (spark_aggregator.py) on a cluster; empty:
    # Spark's choice (this machine's host name).
    spark_driver_host: str = ""
    # Per executor on a cluster; SPARK_CORES_MAX caps the cores the job takes in all (0: all
    # the cluster offers).
    spark_executor_memory: str = "1g"
    spark_executor_cores: int = 1
    spark_cores_max: int = 0
    # (scripts only) The local standalone cluster of scripts/spark_cluster.sh: worker N's web UI
    # listens on SPARK_WORKER_WEBUI_PORT + N - 1; each worker offers SPARK_WORKER_CORES cores and
    # SPARK_WORKER_MEMORY to executors.
    spark_master_host: str = "localhost"
    spark_master_port: int = 7077
    spark_master_webui_port: int = 8080
    spark_workers: int = 1
    spark_worker_cores: int = 2
    spark_worker_memory: str = "2g"
    spark_worker_webui_port: int = 8081
    spark_daemon_memory: str = "512m"
    spark_connector_jars_dir: str = str(REPO_ROOT / "lib" / "spark-kafka")
    # The aggregation keeps one row per window, so a few rows of state in all: one shuffle
    # partition holds them; more only add a task and a state store commit to every batch.
    spark_shuffle_partitions: int = 1
    spark_driver_memory: str = "2g"
    # Spark's own web UI (jobs, stages, the streaming query's batches) on SPARK_UI_PORT while
    # the aggregator runs (Spark takes the next free port when it is taken, and logs where).
    spark_ui_enabled: bool = True
    spark_ui_port: int = 4040
    spark_log_level: str = "WARN"

    # Live streams: every reaction, window and viewer belongs to one. STREAMS are always known
    # (comma-separated); more are added at run time through the registration API (POST
    # /streams, with ADMIN_KEY: when empty, the one generated in VAR_DIR/secrets/admin.key).
    streams: str = "main"
    admin_key: str = ""

    # Events and windows.
    emojis: str = DEFAULT_EMOJIS
    window_seconds: int = 2
    # The aggregator keeps a window open until the watermark (latest event time seen minus this
    # delay) passes its end. The ingest API keeps a client's timestamp only when it is at most
    # MAX_EVENT_AGE_S old and at most MAX_EVENT_FUTURE_S ahead, and uses its own receive time
    # otherwise. The aggregator counts an event only when its time is within those limits, plus
    # EVENT_TIME_MARGIN_S, of its Kafka record's timestamp, and that timestamp is at most the
    # margin ahead of the aggregator's clock: so no record, whoever wrote it, moves the watermark
    # more than MAX_EVENT_FUTURE_S + 2 x EVENT_TIME_MARGIN_S - WATERMARK_DELAY_S ahead of real
    # time. MAX_EVENT_AGE_S + MAX_EVENT_FUTURE_S + 2 x EVENT_TIME_MARGIN_S <= WATERMARK_DELAY_S
    # (checked) keeps every accepted event countable.
    watermark_delay_s: int = 10
    max_event_age_s: float = 3.0
    max_event_future_s: float = 5.0
    event_time_margin_s: float = 1.0
    normalize_threshold: int = 20
    normalize_divisor: int = 100
    # unique_users is estimated with Apache DataSketches' HLL sketch (Spark's hll_sketch_agg) of
    # 2^UNIQUE_USERS_LG_K buckets: relative standard error 1.04/sqrt(2^k), 0.8% at k=14, and exact
    # for small counts.
    unique_users_lg_k: int = 14
    spark_trigger_seconds: float = 0.5
    spark_max_offsets_per_trigger: int = 1_000_000

    # Ingest API (emoji_api.py).
    api_host: str = "localhost"
    api_port: int = 5000
    api_workers: int = 2
    # Threads of each worker that run the app (granian's blocking threads).
    api_threads: int = 4
    api_max_batch: int = 10_000
    api_max_body_bytes: int = 2 * 1024 * 1024
    # The API coalesces accepted events into Kafka records of up to PRODUCER_EVENTS_PER_RECORD
    # events, written every PRODUCER_LINGER_MS (emojistream/ingest/sink.py).
    producer_linger_ms: int = 50
    producer_events_per_record: int = 500
    producer_buffer_bytes: int = 64 * 1024 * 1024
    producer_compression: str = "lz4"
    # How long every producer (the ingest API's, the publishers') retries a record before it
    # reports the record failed; a publisher then sends it again, the API answers 503.
    kafka_delivery_timeout_s: float = 120.0
    # The ingest API answers 503 while records have waited this long for Kafka's acknowledgement
    # (Kafka down or stalled) instead of buffering more that might never be delivered.
    producer_ack_timeout_s: float = 5.0

    # Registration API and WebSocket servers. Cluster N's server listens on WS_FIRST_PORT + N - 1
    # (5002, 5003, 5004).
    registration_host: str = "localhost"
    registration_port: int = 5001
    ws_host: str = "localhost"
    ws_first_port: int = 5002
    # When the WebSocket servers run on several machines: cluster N's server is reached (by the
    # registration API's health checks, the subscribers and, through "{host}" below, viewers) at
    # the N-th host of this comma-separated list; empty: WS_HOST for every cluster.
    ws_cluster_hosts: str = ""
    # What viewers are told to connect to: "{host}", "{port}" and "{n}" (the cluster number)
    # are filled in per cluster, e.g. "wss://ws{n}.cricket.example/" behind a TLS proxy.
    ws_public_url_template: str = "ws://{host}:{port}/"
    subscribers_per_cluster: int = 2
    # Subscribers authenticate to the WebSocket servers with this key; when empty, every process
    # shares the one generated in VAR_DIR/secrets/subscriber.key.
    subscriber_key: str = ""
    # The registration API keeps its registry in memory: one server worker with this many
    # threads.
    registration_threads: int = 4
    # Limits of the registration API: request bodies (413 beyond), registrations per client
    # address (a token bucket: REGISTRATION_BURST_PER_ADDRESS at once, refilled at
    # REGISTRATION_RATE_PER_ADDRESS a second; 429 beyond), viewers in the registry (503 beyond;
    # a registration not renewed within TOKEN_TTL_S expires). The defaults let this machine's
    # own load benchmarks register 20,000 viewers at once from one address.
    registration_max_body_bytes: int = 4096
    registration_rate_per_address: float = 100.0
    registration_burst_per_address: int = 20_000
    registry_max_viewers: int = 1_000_000
    # WebSocket keepalive (heartbeats): every connection is pinged every WS_PING_INTERVAL_S; one
    # whose pong is WS_PING_TIMEOUT_S late is dropped and leaves the live counts. Neither can be
    # below WS_KEEPALIVE_MIN_S: the keepalive is what frees the connections of vanished viewers.
    ws_ping_interval_s: float = 10.0
    ws_ping_timeout_s: float = 10.0
    # How long a closing connection may take to answer the close frame before it is dropped.
    ws_close_timeout_s: float = 2.0
    # Limits of a WebSocket server: viewer connections from one client address (refused with
    # HTTP 429 beyond), and unsent data per viewer (a viewer that stops reading is closed with
    # 4408 beyond). One live connection per client id: a newer one replaces the older (4409).
    ws_max_connections_per_address: int = 10_000
    ws_max_viewer_buffer_bytes: int = 1024 * 1024
    # A WebSocket server remembers which versions of an update it has broadcast for this many
    # windows (the most recent ones), to drop the second copy forwarded by the other subscriber.
    ws_dedup_windows: int = 64
    # A WebSocket server broadcasts an update to this many viewers at a time, letting its event
    # loop run (health checks, pings, new connections, the next update) between batches.
    ws_broadcast_batch: int = 250
    # Pending connections the WebSocket servers' listening socket queues (capped by the kernel's
    # net.core.somaxconn): thousands of viewers reconnecting at once.
    ws_listen_backlog: int = 4096
    # Each subscriber of a cluster consumes in a consumer group of its own ("{n}": the cluster
    # number, "{k}": the subscriber's --id): both forward every update, and the WebSocket server
    # drops the second copy, so killing either one loses nothing and delays nothing.
    subscriber_group_template: str = "cluster{n}-subscriber-{k}"
    subscriber_session_timeout_ms: int = 6000
    subscriber_heartbeat_ms: int = 1000
    # Viewer tokens: the registration API signs (HMAC-SHA256) each viewer's client id, cluster
    # and expiry with TOKEN_SECRET; the WebSocket servers check it. When empty, every process
    # shares the one generated in VAR_DIR/secrets/token.key (distinct from the subscriber key).
    token_secret: str = ""
    # How long a token admits a connection (checked when the connection opens).
    token_ttl_s: float = 3600.0
    # The registration API polls every WebSocket server's health (its live viewer count) this
    # often; a server that does not answer within WS_HEALTH_TIMEOUT_S is down and gets no new
    # viewers. "{host}" and "{port}" are the server's WS_HOST and port.
    ws_health_poll_s: float = 1.0
    ws_health_timeout_s: float = 2.0
    ws_health_url_template: str = "http://{host}:{port}/health"
    # Prometheus metrics (emojistream/common/metrics.py, docs/operations.md). The HTTP components serve
    # GET /metrics on their own port (the ingest API, the registration API, each WebSocket
    # server). The processes that only talk to Kafka each serve it on a port of their own,
    # counted from METRICS_FIRST_PORT: the aggregator +0, the main publisher +1, cluster N's
    # publisher +1+N, cluster N's subscriber K +1+CLUSTER_COUNT+(N-1)*SUBSCRIBERS_PER_CLUSTER+K
    # (9310 to 9320 by default); METRICS_HOST is the address they listen on. Kafka broker K's
    # JMX exporter listens on KAFKA_METRICS_PORT + K - 1 (0: no exporter).
    # `python -m emojistream.ops.prometheus_config` prints a Prometheus scrape config of them all.
    metrics_host: str = "localhost"
    metrics_first_port: int = 9310
    kafka_metrics_port: int = 9404

    # Reconnect delays (exponential backoff with jitter) of subscribers and viewers.
    subscriber_retry_max_s: float = 2.0
    viewer_retry_initial_s: float = 0.5
    viewer_retry_max_s: float = 8.0

    # The web page (static/, served at / by the registration API; see docs/web.md). Browsers
    # send reactions to API_PUBLIC_URL (empty: http://API_HOST:API_PORT, with the page's own
    # host name when API_HOST is a wildcard address like 0.0.0.0) and register at
    # REGISTRATION_PUBLIC_URL (empty: where the page itself was loaded from).
    api_public_url: str = ""
    registration_public_url: str = ""
    # Origins whose pages may call the ingest API (CORS): a comma-separated list of origins like
    # "http://localhost:5001,https://cricket.example", or "*" for any page on the web. Empty:
    # the origin of the registration API's own page (REGISTRATION_PUBLIC_URL, else
    # http://REGISTRATION_HOST:REGISTRATION_PORT, as localhost and 127.0.0.1 when local).
    api_cors_origins: str = ""
    # How often the page asks GET /clusters for the number of viewers online.
    web_stats_interval_s: float = 5.0

    def __post_init__(self):
        if not self.kafka_bootstrap_servers:
            object.__setattr__(self, "kafka_bootstrap_servers", ",".join(
                urls.host_port(self.kafka_host, port) for port in self.local_kafka_ports()))

        self._check_kafka_security()
        self._check_local_kafka_ports()
        self._check_event_time_limits()
        bad_streams = [s for s in self.stream_ids if not STREAM_ID.fullmatch(s)]
        if bad_streams or not self.stream_ids:
            raise ConfigError(f"STREAMS must list stream ids of 1 to 64 characters from "
                              f"[A-Za-z0-9._-], got {self.streams!r}")
        if min(self.ws_ping_interval_s, self.ws_ping_timeout_s) < WS_KEEPALIVE_MIN_S:
            raise ConfigError(f"WS_PING_INTERVAL_S and WS_PING_TIMEOUT_S must be at least "
                              f"{WS_KEEPALIVE_MIN_S:g} s (the keepalive frees the connections of "
                              f"vanished viewers), got {self.ws_ping_interval_s:g} and "
                              f"{self.ws_ping_timeout_s:g}")
        if self.ws_cluster_hosts:
            self.ws_cluster_host(self.cluster_count)

    def _check_local_kafka_ports(self) -> None:
        if self.kafka_brokers < 1:
            raise ConfigError(f"KAFKA_BROKERS must be at least 1, got {self.kafka_brokers}")
        step = self.kafka_port_step
        controllers = [self.kafka_controller_port + i * step for i in range(self.kafka_brokers)]
        ports = self.local_kafka_ports() + controllers
        if len(set(ports)) != len(ports):
            raise ConfigError(f"the {self.kafka_brokers} local brokers' ports overlap: brokers on "
                              f"KAFKA_PORT={self.kafka_port} + (N-1) * KAFKA_PORT_STEP={step}, "
                              f"controllers on KAFKA_CONTROLLER_PORT={self.kafka_controller_port} "
                              "+ (N-1) * KAFKA_PORT_STEP")

    def _check_event_time_limits(self) -> None:
        if min(self.max_event_age_s, self.max_event_future_s, self.event_time_margin_s) < 0:
            raise ConfigError("MAX_EVENT_AGE_S, MAX_EVENT_FUTURE_S and EVENT_TIME_MARGIN_S must "
                              "not be negative")
        spread = self.max_event_age_s + self.max_event_future_s + 2 * self.event_time_margin_s
        if spread > self.watermark_delay_s:
            raise ConfigError(
                f"MAX_EVENT_AGE_S + MAX_EVENT_FUTURE_S + 2 x EVENT_TIME_MARGIN_S ({spread:g} s) "
                f"must not exceed WATERMARK_DELAY_S ({self.watermark_delay_s} s), or accepted "
                "events could arrive after their window closed")

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

    def local_kafka_ports(self) -> list[int]:
        """The client ports of the KAFKA_BROKERS local brokers of scripts/kafka.sh."""
        return [self.kafka_port + i * self.kafka_port_step for i in range(self.kafka_brokers)]

    def topic_replicas(self, brokers: int) -> int:
        """Replicas of every topic, internal ones included, on a cluster of ``brokers``:
        REPLICATION_FACTOR, or min(3, brokers) when it is 0."""
        return self.replication_factor or min(3, brokers)

    def topic_min_insync(self, replicas: int) -> int | None:
        """min.insync.replicas of a topic with ``replicas`` that must not lose a write:
        MIN_INSYNC_REPLICAS, or 2 for 3 or more replicas (one broker may be lost while writes
        with acks=all go on), else None (the broker's default, 1)."""
        if self.min_insync_replicas:
            return self.min_insync_replicas
        return 2 if replicas >= 3 else None

    def cluster_topic(self, n: int) -> str:
        return self.cluster_topic_template.format(n=n)

    def subscribers_topic(self, n: int) -> str:
        return self.subscribers_topic_template.format(n=n)

    def subscriber_group(self, n: int, k: int) -> str:
        return self.subscriber_group_template.format(n=n, k=k)

    def ws_port(self, n: int) -> int:
        """The port of cluster N's WebSocket server."""
        return self.ws_first_port + n - 1

    def aggregator_metrics_port(self) -> int:
        return self.metrics_first_port

    def main_publisher_metrics_port(self) -> int:
        return self.metrics_first_port + 1

    def cluster_publisher_metrics_port(self, n: int) -> int:
        return self.metrics_first_port + 1 + n

    def subscriber_metrics_port(self, n: int, k: int) -> int:
        """Cluster N's subscriber K: after every cluster publisher's port, so no two collide."""
        return (self.metrics_first_port + 1 + self.cluster_count
                + (n - 1) * self.subscribers_per_cluster + k)

    def metrics_port_count(self) -> int:
        """How many ports from METRICS_FIRST_PORT the Kafka-only processes take."""
        return 2 + self.cluster_count * (1 + self.subscribers_per_cluster)

    def kafka_metrics_ports(self) -> list[int]:
        """The JMX exporter's port of each local broker (none when KAFKA_METRICS_PORT is 0)."""
        if not self.kafka_metrics_port:
            return []
        return [self.kafka_metrics_port + i for i in range(self.kafka_brokers)]

    def ws_cluster_host(self, n: int) -> str:
        """The host name of cluster N's WebSocket server (WS_CLUSTER_HOSTS, else WS_HOST)."""
        hosts = [h.strip() for h in self.ws_cluster_hosts.split(",") if h.strip()]
        if not hosts:
            return self.ws_host
        if n > len(hosts):
            raise ConfigError(f"WS_CLUSTER_HOSTS names {len(hosts)} host(s); cluster {n} has none")
        return hosts[n - 1]

    def ws_public_url(self, n: int) -> str:
        return self.ws_public_url_template.format(host=self.ws_cluster_host(n),
                                                  port=self.ws_port(n), n=n)

    def ws_health_url(self, n: int) -> str:
        """Where the registration API polls cluster N's server."""
        host = urls.bracketed(urls.reachable(self.ws_cluster_host(n)))
        return self.ws_health_url_template.format(host=host, port=self.ws_port(n), n=n)

    def ws_publish_url(self, n: int) -> str:
        """Where cluster N's subscribers hand updates to its WebSocket server."""
        return urls.ws_url(self.ws_cluster_host(n), self.ws_port(n), "/publish")

    def ws_keepalive(self) -> dict:
        """websockets' keepalive arguments (heartbeats), for servers and clients alike."""
        return {"ping_interval": self.ws_ping_interval_s, "ping_timeout": self.ws_ping_timeout_s}

    def api_url(self) -> str:
        """The ingest API's URL for browsers (API_PUBLIC_URL, or from API_HOST and API_PORT)."""
        return (self.api_public_url or urls.http_url(self.api_host, self.api_port)).rstrip("/")

    def registration_url(self) -> str:
        """The registration API's (and the web page's) URL for browsers."""
        return (self.registration_public_url
                or urls.http_url(self.registration_host, self.registration_port)).rstrip("/")

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """The origins of API_CORS_ORIGINS, or of the registration API's page: ("*",) allows
        any origin."""
        if self.api_cors_origins.strip():
            return tuple(o.strip().rstrip("/") for o in self.api_cors_origins.split(",")
                         if o.strip())
        if self.registration_public_url:
            return (urls.origin(self.registration_public_url),)
        if self.registration_host in urls.LOCAL_HOSTS:
            return tuple(urls.http_url(host, self.registration_port)
                         for host in ("localhost", "127.0.0.1"))
        return (urls.http_url(self.registration_host, self.registration_port),)

    @property
    def stream_ids(self) -> tuple[str, ...]:
        """The streams of STREAMS."""
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


WS_KEEPALIVE_MIN_S = 1.0
# A stream id: what STREAMS, events and registrations may name (emojistream/common/streams.py).
STREAM_ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
# Settings whose values the listing of ``python -m emojistream.config`` does not show.
SECRET_SUFFIXES = ("PASSWORD", "SECRET", "SUBSCRIBER_KEY", "ADMIN_KEY")
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class ConfigError(ValueError):
    """A setting from the environment has a value of the wrong kind."""


# Settings renamed: the old name in the environment is refused with the new one's name.
RENAMED = {"WS_BASE_PORT": "WS_FIRST_PORT (cluster N's WebSocket server listens on "
                           "WS_FIRST_PORT + N - 1: WS_BASE_PORT + 1)"}
BOOLEANS = {"true": True, "1": True, "yes": True, "on": True,
            "false": False, "0": False, "no": False, "off": False}


def env_name(setting) -> str:
    """The environment variable of a field of Settings: its name in upper case."""
    return setting.name.upper()


def _convert(raw: str, kind, name: str):
    if kind is bool or kind == "bool":
        try:
            return BOOLEANS[raw.strip().lower()]
        except KeyError:
            raise ConfigError(f"{name} must be true or false, got {raw!r}") from None
    if kind is int or kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if kind is float or kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    return raw


def load(environ=None, **overrides) -> Settings:
    """Settings from the defaults, then the environment, then explicit ``overrides``."""
    environ = os.environ if environ is None else environ
    for old, new in RENAMED.items():
        if old in environ:
            raise ConfigError(f"{old} is no longer read; set {new}")
    values = {}
    for f in fields(Settings):
        name = env_name(f)
        if name in environ:
            values[f.name] = _convert(environ[name], f.type, name)
    values.update(overrides)
    return Settings(**values)


def to_environment(settings: Settings) -> dict[str, str]:
    """The environment variables that ``load`` turns into these settings (a process that starts
    others hands its settings down this way)."""
    return {env_name(f): _shell_value(getattr(settings, f.name)) for f in fields(settings)}


def as_shell(settings: Settings) -> str:
    """``NAME=value`` lines for ``eval`` in shell scripts, plus the derived topic lists."""
    lines = [f"{name}={shlex.quote(value)}" for name, value in to_environment(settings).items()]
    lines.append("CLUSTER_TOPICS=" + shlex.quote(
        " ".join(settings.cluster_topic(n) for n in settings.clusters)))
    lines.append("SUBSCRIBERS_TOPICS=" + shlex.quote(
        " ".join(settings.subscribers_topic(n) for n in settings.clusters)))
    lines.append("WEB_PAGE_URL=" + shlex.quote(settings.registration_url() + "/"))
    return "\n".join(lines)


def _shell_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emojistream.config",
        description="Print the effective configuration (defaults overridden by the environment).")
    parser.add_argument("--shell", action="store_true",
                        help="print NAME=value lines for eval in a shell script")
    parser.add_argument("--topic-replication", type=int, metavar="BROKERS",
                        help="print the replicas and min.insync.replicas of a topic on a cluster "
                             "of BROKERS brokers (0 for the broker's default)")
    args = parser.parse_args(argv)
    try:
        settings = load()
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    if args.topic_replication is not None:
        replicas = settings.topic_replicas(args.topic_replication)
        print(replicas, settings.topic_min_insync(replicas) or 0)
    elif args.shell:
        print(as_shell(settings))
    else:
        for f in fields(settings):
            name, value = env_name(f), getattr(settings, f.name)
            if value and name.endswith(SECRET_SUFFIXES):
                value = "(set)"
            print(f"{name:<28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
