"""A SparkSession wired to the local copy of Spark's Kafka connector (lib/spark-kafka).

The connector jars were fetched by scripts/setup.sh; Spark gets them through ``spark.jars``, which
also ships them to the executors of a Spark cluster (the driver serves them and every executor
fetches them when it starts). Nothing is resolved from a repository at run time (no
``spark.jars.packages``). ``kafka_options`` gives the Kafka source and sink the same bootstrap
list and security settings as the kafka-python clients.
"""

from __future__ import annotations

import os
from pathlib import Path

from emojistream.aggregator.settings import STATE_STORE_PROVIDERS
from emojistream.aggregator.settings import AggregatorSettings as Settings
from emojistream.common.settings import REPO_ROOT, ConfigError

LOG_CONFIG = REPO_ROOT / "config" / "spark-log4j2.properties"
# The project's Log4j (jvm/log4j/pom.xml, the brokers' version), ahead of pyspark's on every
# Spark JVM's classpath: Java expands the "*".
LOG4J_CLASSPATH = str(REPO_ROOT / "lib" / "log4j" / "*")


class ConnectorMissing(RuntimeError):
    """Spark's Kafka connector jars are not where the configuration says."""


def connector_jars(settings: Settings) -> list[str]:
    """The connector's jars (Spark's Kafka source and sink and what they need beyond pyspark)."""
    jars = sorted(str(p) for p in Path(settings.spark_connector_jars_dir).glob("*.jar"))
    if not any("spark-sql-kafka" in Path(j).name for j in jars):
        raise ConnectorMissing(
            f"Spark's Kafka connector is not in {settings.spark_connector_jars_dir}: "
            "run scripts/setup.sh")
    return jars


# Java's login modules for the SASL mechanisms that take a username and password.
SASL_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _read_pem(path: str, setting: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{setting}={path} cannot be read: {err.strerror}") from None


def kafka_options(settings: Settings) -> dict[str, str]:
    """The ``kafka.*`` options of Spark's Kafka source and sink: the bootstrap list and the
    security settings, as Kafka's Java client names them.

    The TLS files are read here and passed as PEM text (``ssl.truststore.certificates``,
    ``ssl.keystore.certificate.chain``, ``ssl.keystore.key``), so the executors of a cluster
    need no copy of them. Java's client wants the key in PKCS#8 (``BEGIN PRIVATE KEY`` or
    ``BEGIN ENCRYPTED PRIVATE KEY``).
    """
    options = {"kafka.bootstrap.servers": settings.kafka_bootstrap_servers}
    protocol = settings.kafka_security_protocol.upper()
    if protocol == "PLAINTEXT":
        return options
    options["kafka.security.protocol"] = protocol
    if protocol.startswith("SASL_"):
        mechanism = settings.kafka_sasl_mechanism.upper()
        options["kafka.sasl.mechanism"] = mechanism
        options["kafka.sasl.jaas.config"] = (
            f"{SASL_LOGIN_MODULES[mechanism]} required "
            f"username={_jaas_quote(settings.kafka_sasl_username)} "
            f"password={_jaas_quote(settings.kafka_sasl_password)};")
    if protocol.endswith("SSL"):
        if not settings.kafka_ssl_check_hostname:
            options["kafka.ssl.endpoint.identification.algorithm"] = ""
        if settings.kafka_ssl_cafile:
            options["kafka.ssl.truststore.type"] = "PEM"
            options["kafka.ssl.truststore.certificates"] = _read_pem(
                settings.kafka_ssl_cafile, "KAFKA_SSL_CAFILE")
        if settings.kafka_ssl_certfile:
            options["kafka.ssl.keystore.type"] = "PEM"
            options["kafka.ssl.keystore.certificate.chain"] = _read_pem(
                settings.kafka_ssl_certfile, "KAFKA_SSL_CERTFILE")
            options["kafka.ssl.keystore.key"] = _read_pem(
                settings.kafka_ssl_keyfile, "KAFKA_SSL_KEYFILE")
            if settings.kafka_ssl_key_password:
                options["kafka.ssl.key.password"] = settings.kafka_ssl_key_password
    return options


def cluster_conf(settings: Settings) -> dict[str, str]:
    """What a job asks of a Spark cluster: executor size, the cores it may take in all, and
    where executors reach the driver, which also listens there (its UI alone listens on
    SPARK_UI_HOST). (Local mode ignores the executor settings.)"""
    conf = {"spark.executor.memory": settings.spark_executor_memory,
            "spark.executor.cores": str(settings.spark_executor_cores)}
    if settings.spark_cores_max > 0:
        conf["spark.cores.max"] = str(settings.spark_cores_max)
    if settings.spark_driver_host:
        conf["spark.driver.host"] = settings.spark_driver_host
        conf["spark.driver.bindAddress"] = settings.spark_driver_host
    return conf


def streaming_conf(settings: Settings) -> dict[str, str]:
    """The query's shuffle partitions and state store. Spark keeps both in the checkpoint: a
    query restarted from one keeps what it was started with."""
    return {"spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
            "spark.sql.streaming.stateStore.providerClass":
                STATE_STORE_PROVIDERS[settings.spark_state_store]}


def log4j_conf() -> dict[str, str]:
    """One Log4j for the driver and the executors: the project's jars (lib/log4j) first on
    their classpath, and its configuration (config/spark-log4j2.properties)."""
    if not Path(LOG4J_CLASSPATH).parent.is_dir():
        raise ConnectorMissing(f"the project's Log4j is not in {Path(LOG4J_CLASSPATH).parent}: "
                               "run scripts/setup.sh")
    return {f"spark.{jvm}.{key}": value for jvm in ("driver", "executor") for key, value in (
        ("extraClassPath", LOG4J_CLASSPATH),
        ("extraJavaOptions", f"-Dlog4j2.configurationFile={LOG_CONFIG}"))}


def spark_session(settings: Settings, app_name: str, extra_conf: dict | None = None):
    from pyspark.sql import SparkSession

    # Spark binds its web UI to SPARK_LOCAL_IP (it has no other setting for it), else to every
    # interface; the driver's own address is spark.driver.bindAddress (cluster_conf).
    os.environ["SPARK_LOCAL_IP"] = settings.spark_ui_host

    builder = (SparkSession.builder
               .appName(app_name)
               .master(settings.spark_master)
               .config("spark.jars", ",".join(connector_jars(settings)))
               .config("spark.ui.enabled", str(settings.spark_ui_enabled).lower())
               .config("spark.ui.port", str(settings.spark_ui_port))
               .config("spark.ui.killEnabled", str(settings.spark_ui_kill_enabled).lower())
               .config("spark.driver.memory", settings.spark_driver_memory)
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.ui.showConsoleProgress", "false"))
    for key, value in {**log4j_conf(), **cluster_conf(settings), **streaming_conf(settings),
                       **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(settings.spark_log_level)
    return session
