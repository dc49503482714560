"""One Log4j for every JVM (fast checks; the JVMs themselves: tests/test_aggregator.py for the
driver, tests/test_spark_cluster.py for the master and the worker, scripts/kafka.sh's classpath
for the brokers)."""

from __future__ import annotations

import re
from pathlib import Path

import pyspark

from emojistream.aggregator.spark import LOG4J_CLASSPATH, LOG_CONFIG, log4j_conf
from tests.services import REPO_ROOT


def log4j_version(pom: str) -> str:
    found = re.search(r"<log4j.version>(.+)</log4j.version>", (REPO_ROOT / pom).read_text())
    assert found, pom
    return found.group(1)


def artifacts(folder: Path) -> set[str]:
    """The Log4j artifacts of a folder of jars, without their versions."""
    return {re.sub(r"-[0-9][^-]*\.jar$", "", jar.name) for jar in folder.glob("log4j-*.jar")}


def test_spark_and_kafka_name_the_same_log4j():
    assert log4j_version("jvm/log4j/pom.xml") == log4j_version("jvm/kafka/pom.xml")


def test_every_log4j_artifact_pyspark_ships_is_replaced_by_the_projects():
    bundled = artifacts(Path(pyspark.__file__).parent / "jars")
    assert bundled <= artifacts(REPO_ROOT / "lib" / "log4j"), bundled
    version = log4j_version("jvm/log4j/pom.xml")
    assert {jar.name.rsplit("-", 1)[1] for jar in (REPO_ROOT / "lib" / "log4j").glob("*.jar")} \
        == {f"{version}.jar"}


def test_the_driver_executors_and_daemons_get_the_jars_and_the_configuration():
    options = f"-Dlog4j2.configurationFile={LOG_CONFIG}"
    assert log4j_conf() == {
        "spark.driver.extraClassPath": LOG4J_CLASSPATH,
        "spark.driver.extraJavaOptions": options,
        "spark.executor.extraClassPath": LOG4J_CLASSPATH,
        "spark.executor.extraJavaOptions": options}
    script = (REPO_ROOT / "scripts" / "spark_cluster.sh").read_text()
    assert 'export SPARK_DAEMON_CLASSPATH="$REPO_ROOT/lib/log4j/*"' in script
    assert "-Dlog4j2.configurationFile=$REPO_ROOT/config/spark-log4j2.properties" in script
    kafka = (REPO_ROOT / "scripts" / "kafka.sh").read_text()
    assert "-Dlog4j2.configurationFile=$REPO_ROOT/config/kafka-log4j2.properties" in kafka
