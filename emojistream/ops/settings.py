"""Settings read by the shell scripts alone (docs/operations.md#settings)."""

from __future__ import annotations

from dataclasses import dataclass

from emojistream.common.settings import SharedSettings


@dataclass(frozen=True)
class ScriptSettings(SharedSettings):
    kafka_heap: str = "1g"  # each local broker's
    kafka_home: str = ""  # a Kafka distribution to run instead of lib/kafka
    kafka_voters: str = ""  # "1@host:port,...": brokers on hosts of their own; empty: local
    kafka_cluster_id: str = ""  # the id brokers format their storage with; empty: generated
    topology_file: str = ""  # hosts and what runs on each (TOML, docs/deploy.md); empty: one
    log_max_bytes: int = 10 * 1024 * 1024  # a component's log rotates at this size
    log_backups: int = 3  # rotated logs kept
    spark_master_host: str = "localhost"  # scripts/spark_cluster.sh
    spark_master_port: int = 7077
    spark_master_webui_port: int = 8080
    spark_worker_host: str = ""  # a worker's own address; empty: SPARK_MASTER_HOST
    spark_workers: int = 1
    spark_worker_cores: int = 2
    spark_worker_memory: str = "2g"
    spark_worker_webui_port: int = 8081  # worker N: +N-1
    spark_daemon_memory: str = "512m"
