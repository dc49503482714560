"""A SparkSession wired to the local copy of Spark's Kafka connector (lib/spark-kafka).

The connector jars were fetched by scripts/setup.sh; Spark gets them through ``spark.jars``, which
also ships them to the executors of a Spark cluster. Nothing is resolved from a repository at
run time (no ``spark.jars.packages``).
"""

from __future__ import annotations

from pathlib import Path

from .config import REPO_ROOT, Settings

LOG_CONFIG = REPO_ROOT / "config" / "spark-log4j2.properties"


class ConnectorMissing(RuntimeError):
    """Spark's Kafka connector jars are not where the configuration says."""


def connector_jars(settings: Settings) -> list[str]:
    jars = sorted(str(p) for p in Path(settings.spark_connector_jars_dir).glob("*.jar"))
    if not any("spark-sql-kafka" in Path(j).name for j in jars):
        raise ConnectorMissing(
            f"Spark's Kafka connector is not in {settings.spark_connector_jars_dir}: "
            "run scripts/setup.sh")
    return jars


def spark_session(settings: Settings, app_name: str, extra_conf: dict | None = None):
    from pyspark.sql import SparkSession

    builder = (SparkSession.builder
               .appName(app_name)
               .master(settings.spark_master)
               .config("spark.jars", ",".join(connector_jars(settings)))
               .config("spark.sql.shuffle.partitions", settings.spark_shuffle_partitions)
               .config("spark.ui.enabled", str(settings.spark_ui_enabled).lower())
               .config("spark.driver.memory", settings.spark_driver_memory)
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.extraJavaOptions",
                       f"-Dlog4j2.configurationFile={LOG_CONFIG}"))
    for key, value in (extra_conf or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(settings.spark_log_level)
    return session
