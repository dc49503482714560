"""The settings and what the Kafka clients and Spark get from them: bootstrap lists, security
options, cluster hosts (no broker, no JVM)."""

from __future__ import annotations

import pytest

from emojistream import config, topology
from emojistream.aggregator.spark import cluster_conf, kafka_options, streaming_conf
from emojistream.common import kafka_clients
from emojistream.ingest.settings import IngestSettings
from emojistream.ingest.sink import KafkaEventSink


def settings_with(**env) -> config.Settings:
    return config.load({"KAFKA_BOOTSTRAP_SERVERS": "k1:9093,k2:9093", **env})


def test_plaintext_clients_get_the_bootstrap_list_only():
    assert kafka_clients.client_options(settings_with(), 5) == {
        "bootstrap_servers": ["k1:9093", "k2:9093"], "bootstrap_timeout_ms": 5000}


def test_local_brokers_make_the_default_bootstrap_list():
    settings = config.load({"KAFKA_BROKERS": "3", "KAFKA_HOST": "kafka.local",
                            "KAFKA_PORT": "19092"})
    assert settings.kafka_bootstrap_servers == ("kafka.local:19092,kafka.local:19094,"
                                                "kafka.local:19096")


def test_sasl_ssl_settings_reach_every_kafka_python_client(monkeypatch):
    settings = settings_with(KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                             KAFKA_SASL_MECHANISM="scram-sha-512", KAFKA_SASL_USERNAME="emoji",
                             KAFKA_SASL_PASSWORD="s3cret",
                             KAFKA_SSL_CAFILE="/etc/kafka/ca.pem")
    security = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "emoji", "sasl_plain_password": "s3cret",
                "ssl_check_hostname": True, "ssl_cafile": "/etc/kafka/ca.pem"}
    made = []

    def fake(kind):
        return lambda *args, **kwargs: made.append((kind, args, kwargs))

    for name in ("KafkaProducer", "KafkaConsumer", "KafkaAdminClient"):
        monkeypatch.setattr(kafka_clients, name, fake(name))
    kafka_clients.producer(settings, acks="all")
    kafka_clients.consumer(settings, "topic-a", group_id="g")
    kafka_clients.admin_client(settings)
    base = {"bootstrap_servers": ["k1:9093", "k2:9093"], "bootstrap_timeout_ms": 10000,
            **security}
    assert made == [("KafkaProducer", (), {**base, "acks": "all"}),
                    ("KafkaConsumer", ("topic-a",), {**base, "group_id": "g"}),
                    ("KafkaAdminClient", (), base)]


def test_mutual_tls_settings():
    settings = settings_with(KAFKA_SECURITY_PROTOCOL="ssl", KAFKA_SSL_CAFILE="ca.pem",
                             KAFKA_SSL_CERTFILE="client.pem", KAFKA_SSL_KEYFILE="client.key",
                             KAFKA_SSL_KEY_PASSWORD="pw", KAFKA_SSL_CHECK_HOSTNAME="false")
    assert kafka_clients.security_options(settings) == {
        "security_protocol": "SSL", "ssl_check_hostname": False, "ssl_cafile": "ca.pem",
        "ssl_certfile": "client.pem", "ssl_keyfile": "client.key", "ssl_password": "pw"}


@pytest.mark.parametrize("env, message", [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "needs KAFKA_SASL_MECHANISM"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN"},
     "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "c.pem"},
     "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together"),
])
def test_security_settings_that_do_not_fit_are_refused(env, message):
    with pytest.raises(config.ConfigError, match=message):
        settings_with(**env)


def test_websocket_servers_on_several_machines():
    settings = config.load({"WS_CLUSTER_HOSTS": "ws1.internal, ws2.internal", "CLUSTER_COUNT": "2",
                            "WS_HOST": "0.0.0.0", "WS_FIRST_PORT": "7001",
                            "WS_PUBLIC_URL_TEMPLATE": "wss://ws{n}.cricket.example/"})
    assert [topology.ws_public_url(settings, n) for n in settings.clusters] == [
        "wss://ws1.cricket.example/", "wss://ws2.cricket.example/"]
    assert [topology.ws_health_url(settings, n) for n in settings.clusters] == [
        "http://ws1.internal:7001/health", "http://ws2.internal:7002/health"]
    with pytest.raises(config.ConfigError, match="WS_CLUSTER_HOSTS names 1 host"):
        config.load({"WS_CLUSTER_HOSTS": "ws1.internal", "CLUSTER_COUNT": "2"})


def test_spark_kafka_options_plaintext():
    settings = config.load({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"})
    assert kafka_options(settings) == {"kafka.bootstrap.servers": "k1:9092,k2:9092"}


def test_spark_kafka_options_sasl_ssl_with_pem_files(tmp_path):
    (tmp_path / "ca.pem").write_text("CA PEM")
    (tmp_path / "client.pem").write_text("CERT PEM")
    (tmp_path / "client.key").write_text("KEY PEM")
    settings = config.load({
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9093", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "emoji",
        "KAFKA_SASL_PASSWORD": 'p"w', "KAFKA_SSL_CAFILE": str(tmp_path / "ca.pem"),
        "KAFKA_SSL_CERTFILE": str(tmp_path / "client.pem"),
        "KAFKA_SSL_KEYFILE": str(tmp_path / "client.key"), "KAFKA_SSL_KEY_PASSWORD": "kp",
        "KAFKA_SSL_CHECK_HOSTNAME": "false"})
    assert kafka_options(settings) == {
        "kafka.bootstrap.servers": "k1:9093",
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "PLAIN",
        "kafka.sasl.jaas.config": "org.apache.kafka.common.security.plain.PlainLoginModule "
                                  'required username="emoji" password="p\\"w";',
        "kafka.ssl.endpoint.identification.algorithm": "",
        "kafka.ssl.truststore.type": "PEM",
        "kafka.ssl.truststore.certificates": "CA PEM",
        "kafka.ssl.keystore.type": "PEM",
        "kafka.ssl.keystore.certificate.chain": "CERT PEM",
        "kafka.ssl.keystore.key": "KEY PEM",
        "kafka.ssl.key.password": "kp"}


def test_spark_kafka_options_scram_and_a_missing_ca_file(tmp_path):
    settings = config.load({
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"})
    options = kafka_options(settings)
    assert options["kafka.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="u" '
        'password="p";')
    assert not any(key.startswith("kafka.ssl.") for key in options)
    missing = config.load({"KAFKA_SECURITY_PROTOCOL": "SSL",
                           "KAFKA_SSL_CAFILE": str(tmp_path / "nowhere.pem")})
    with pytest.raises(config.ConfigError, match="KAFKA_SSL_CAFILE=.*cannot be read"):
        kafka_options(missing)


def test_executor_size_and_driver_address_from_settings():
    assert cluster_conf(config.load({})) == {"spark.executor.memory": "1g",
                                             "spark.executor.cores": "1"}
    assert cluster_conf(config.load({
        "SPARK_EXECUTOR_MEMORY": "3g", "SPARK_EXECUTOR_CORES": "2", "SPARK_CORES_MAX": "6",
        "SPARK_DRIVER_HOST": "driver.internal"})) == {
        "spark.executor.memory": "3g", "spark.executor.cores": "2", "spark.cores.max": "6",
        "spark.driver.host": "driver.internal", "spark.driver.bindAddress": "driver.internal"}


def test_the_state_store_is_chosen_by_name():
    assert streaming_conf(config.load({})) == {
        "spark.sql.shuffle.partitions": "1",
        "spark.sql.streaming.stateStore.providerClass":
            "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider"}
    rocksdb = streaming_conf(config.load({"SPARK_STATE_STORE": "rocksdb"}))
    assert rocksdb["spark.sql.streaming.stateStore.providerClass"] == (
        "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
    with pytest.raises(config.ConfigError,
                       match="SPARK_STATE_STORE must be one of hdfs, rocksdb, got 'memory'"):
        config.load({"SPARK_STATE_STORE": "memory"})


def test_subscribers_publish_on_a_loopback_listener_after_the_viewers_ports_by_default():
    settings = config.load({"WS_HOST": "ws.example", "WS_FIRST_PORT": "6002",
                            "WS_CLUSTER_HOSTS": "ws1.example,ws2.example,::1"})
    assert [topology.ws_port(settings, n) for n in (1, 2, 3)] == [6002, 6003, 6004]
    assert [topology.ws_publish_port(settings, n) for n in (1, 2, 3)] == [6005, 6006, 6007]
    assert [topology.ws_publish_url(settings, n) for n in (1, 2, 3)] == [
        "ws://127.0.0.1:6005/publish", "ws://127.0.0.1:6006/publish",
        "ws://127.0.0.1:6007/publish"]
    assert [topology.ws_publish_port(config.load({}), n) for n in (1, 2, 3)] == [5005, 5006,
                                                                                5007]


def test_a_publish_listener_on_every_interface_is_reached_at_each_clusters_host():
    settings = config.load({"WS_HOST": "ws.example", "WS_FIRST_PORT": "6002",
                            "WS_CLUSTER_HOSTS": "ws1.example,ws2.example,::1",
                            "WS_PUBLISH_HOST": "0.0.0.0", "WS_PUBLISH_FIRST_PORT": "7000"})
    assert [topology.ws_publish_url(settings, n) for n in (1, 2, 3)] == [
        "ws://ws1.example:7000/publish", "ws://ws2.example:7001/publish",
        "ws://[::1]:7002/publish"]
    single_host = config.load({"WS_HOST": "0.0.0.0", "WS_PUBLISH_HOST": "::",
                               "WS_FIRST_PORT": "6002"})
    assert topology.ws_publish_url(single_host, 2) == "ws://localhost:6006/publish"
    private = config.load({"WS_PUBLISH_HOST": "10.1.2.3", "WS_PUBLISH_FIRST_PORT": "7000"})
    assert topology.ws_publish_url(private, 3) == "ws://10.1.2.3:7002/publish"


def test_publish_ports_that_overlap_the_viewers_are_refused():
    with pytest.raises(config.ConfigError, match=r"publish ports \(WS_PUBLISH_FIRST_PORT=5003 "
                                                 r"\+ N - 1\) overlap their viewers' ports"):
        config.load({"WS_PUBLISH_FIRST_PORT": "5003"})


def test_the_tls_certificate_and_key_go_together():
    with pytest.raises(config.ConfigError, match="WS_TLS_CERT and WS_TLS_KEY go together"):
        config.load({"WS_TLS_CERT": "/etc/cert.pem"})


def test_the_old_ws_base_port_is_refused_with_its_replacement():
    with pytest.raises(config.ConfigError, match="WS_BASE_PORT is no longer read; set "
                                                 "WS_FIRST_PORT"):
        config.load({"WS_BASE_PORT": "5001"})


@pytest.mark.parametrize("raw, value", [("true", True), ("FALSE", False), ("1", True),
                                        ("no", False), (" on ", True)])
def test_booleans_are_read_as_booleans(raw, value):
    assert config.load({"SPARK_UI_ENABLED": raw}).spark_ui_enabled is value


def test_a_boolean_that_is_not_one_is_refused():
    with pytest.raises(config.ConfigError, match="SPARK_UI_ENABLED must be true or false, "
                                                 "got 'maybe'"):
        config.load({"SPARK_UI_ENABLED": "maybe"})


def test_every_setting_is_read_from_its_name_in_upper_case():
    settings = config.load({"WS_FIRST_PORT": "7002", "TOPIC_PARTITIONS": "3",
                            "PRODUCER_ACK_TIMEOUT_S": "2.5"})
    assert (settings.ws_first_port, settings.topic_partitions,
            settings.producer_ack_timeout_s) == (7002, 3, 2.5)
    assert "WS_FIRST_PORT=7002" in config.as_shell(settings).splitlines()


@pytest.mark.parametrize("brokers, env, expected", [
    (1, {}, (1, None)), (2, {}, (2, None)), (3, {}, (3, 2)), (5, {}, (3, 2)),
    (3, {"REPLICATION_FACTOR": "2"}, (2, None)),
    (3, {"MIN_INSYNC_REPLICAS": "3"}, (3, 3))])
def test_the_replication_policy_of_every_topic(brokers, env, expected):
    settings = config.load(env)
    replicas = topology.topic_replicas(settings, brokers)
    assert (replicas, topology.topic_min_insync(settings, replicas)) == expected


def test_the_watermark_covers_the_event_time_limits_and_the_ingest_delivery_bound():
    settings = config.load({})
    assert (settings.max_event_age_s + settings.max_event_future_s
            + 2 * settings.event_time_margin_s + settings.ingest_delivery_timeout_s
            == settings.watermark_delay_s == 40)
    config.load({"WATERMARK_DELAY_S": "12", "INGEST_DELIVERY_TIMEOUT_S": "2",
                 "PRODUCER_ACK_TIMEOUT_S": "1"})
    with pytest.raises(config.ConfigError, match=r"MAX_EVENT_AGE_S \+ MAX_EVENT_FUTURE_S \+ 2 x "
                       r"EVENT_TIME_MARGIN_S \+ INGEST_DELIVERY_TIMEOUT_S \(3 \+ 5 \+ 2 x 1 \+ "
                       r"31 = 41 s\) must not exceed WATERMARK_DELAY_S \(40 s\)"):
        config.load({"INGEST_DELIVERY_TIMEOUT_S": "31"})
    with pytest.raises(config.ConfigError, match="INGEST_DELIVERY_TIMEOUT_S must be at least 2"):
        config.load({"INGEST_DELIVERY_TIMEOUT_S": "1", "WATERMARK_DELAY_S": "40"})


def test_the_ingest_producer_delivers_within_the_bound():
    settings = config.load({})
    sink = KafkaEventSink(settings)
    retry_s, delivery_s = sink.delivery_bound()
    options = sink.producer_options()
    assert retry_s == 7.5 and options["delivery_timeout_ms"] == int(delivery_s * 1000) == 22_445
    assert retry_s + delivery_s + (settings.producer_linger_ms + 5) / 1000 == pytest.approx(30)
    assert options["request_timeout_ms"] + options["linger_ms"] <= options["delivery_timeout_ms"]
    assert options["request_timeout_ms"] == 22_445 // 3  # three tries fit


@pytest.mark.parametrize(("env", "message"), [
    ({"API_EVENTS_PER_S_PER_ADDRESS": "-1"}, "API_EVENTS_PER_S_PER_ADDRESS must not be negative"),
    ({"API_EVENTS_BURST_PER_VIEWER": "0"}, "API_EVENTS_BURST_PER_VIEWER must be at least 1"),
    ({"PRODUCER_ACK_TIMEOUT_S": "30"}, r"PRODUCER_ACK_TIMEOUT_S \(30 s\) must be less than "
                                       r"INGEST_DELIVERY_TIMEOUT_S \(30 s\)"),
])
def test_ingest_limits_that_make_no_sense_are_refused(env, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load_from(IngestSettings, env)


def test_the_refusals_log_interval_must_be_positive():
    with pytest.raises(config.ConfigError, match="REFUSALS_LOG_INTERVAL_S must be more than 0, "
                                                 "got 0"):
        config.load({"REFUSALS_LOG_INTERVAL_S": "0"})
