"""Settings read by the shell scripts alone (docs/operations.md#settings)."""

from __future__ import annotations

from dataclasses import dataclass

from emojistream.common.settings import SharedSettings


@dataclass(frozen=True)
class ScriptSettings(SharedSettings):
    kafka_heap: str = "1g"  # each local broker's
    kafka_home: str = ""  # a Kafka distribution to run instead of lib/kafka
    spark_master_host: str = "localhost"  # scripts/spark_cluster.sh
    spark_master_port: int = 7077
    spark_master_webui_port: int = 8080
    spark_workers: int = 1
    spark_worker_cores: int = 2
    spark_worker_memory: str = "2g"
    spark_worker_webui_port: int = 8081  # worker N: +N-1
    spark_daemon_memory: str = "512m"
