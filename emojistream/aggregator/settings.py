"""The aggregator's settings (docs/operations.md#settings)."""

from __future__ import annotations

from dataclasses import dataclass

from emojistream.common.settings import REPO_ROOT, ConfigError, SharedSettings

# Spark's state store providers, by the name SPARK_STATE_STORE takes.
STATE_STORE_PROVIDERS = {
    "hdfs": "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider",
    "rocksdb": "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
}


@dataclass(frozen=True)
class AggregatorSettings(SharedSettings):
    spark_master: str = "local[*]"  # or spark://host:port
    spark_driver_host: str = ""  # where executors reach the driver; empty: Spark's choice
    spark_driver_memory: str = "2g"
    spark_executor_memory: str = "1g"
    spark_executor_cores: int = 1
    spark_cores_max: int = 0  # 0: all the cluster offers
    spark_checkpoint: str = ""  # on a cluster: storage every executor reaches (hdfs://...)
    spark_connector_jars_dir: str = str(REPO_ROOT / "lib" / "spark-kafka")
    spark_shuffle_partitions: int = 1
    spark_ui_enabled: bool = True
    spark_ui_port: int = 4040
    spark_ui_host: str = "127.0.0.1"  # every Spark UI's address (driver, master, workers)
    spark_ui_kill_enabled: bool = False  # whether a UI may kill jobs and stages
    spark_log_level: str = "WARN"
    spark_trigger_seconds: float = 0.5
    spark_max_offsets_per_trigger: int = 1_000_000
    spark_state_store: str = "hdfs"  # a key of STATE_STORE_PROVIDERS
    normalize_threshold: int = 20
    normalize_divisor: int = 100
    unique_users_lg_k: int = 14  # HLL sketch of 2^k buckets

    def __post_init__(self):
        super().__post_init__()
        if self.spark_state_store not in STATE_STORE_PROVIDERS:
            raise ConfigError(f"SPARK_STATE_STORE must be one of "
                              f"{', '.join(STATE_STORE_PROVIDERS)}, got {self.spark_state_store!r}")
