"""Spark's Kafka connector, from the jars setup fetched, reads from and writes to the broker."""

from __future__ import annotations

import pytest
from kafka.admin import NewTopic

from emojistream.aggregator.spark import spark_session
from emojistream.common import kafka_clients

pytestmark = [pytest.mark.spark, pytest.mark.kafka]


def test_structured_streaming_reads_and_writes_kafka(kafka, tmp_path, topic_name):
    source, sink = f"{topic_name}-in", f"{topic_name}-out"
    admin = kafka_clients.admin_client(kafka)
    admin.create_topics([NewTopic(source, 2, 1), NewTopic(sink, 1, 1)])
    admin.close()
    producer = kafka_clients.producer(kafka)
    for i in range(20):
        producer.send(source, key=str(i).encode(), value=f"emoji-{i}".encode())
    producer.flush()
    producer.close()

    spark = spark_session(kafka, "connector-test",
                          {"spark.sql.shuffle.partitions": "1", "spark.master": "local[2]"})
    try:
        upper = (spark.readStream.format("kafka")
                 .option("kafka.bootstrap.servers", kafka.kafka_bootstrap_servers)
                 .option("subscribe", source)
                 .option("startingOffsets", "earliest")
                 .load()
                 .selectExpr("key", "upper(CAST(value AS STRING)) AS value"))
        query = (upper.writeStream.format("kafka")
                 .option("kafka.bootstrap.servers", kafka.kafka_bootstrap_servers)
                 .option("topic", sink)
                 .option("checkpointLocation", str(tmp_path / "checkpoint"))
                 .trigger(availableNow=True)
                 .start())
        query.awaitTermination(180)
        assert query.exception() is None
        assert sum(p["numInputRows"] for p in query.recentProgress) == 20
    finally:
        spark.stop()

    consumer = kafka_clients.consumer(kafka, sink, auto_offset_reset="earliest",
                                      group_id=sink, consumer_timeout_ms=5000)
    received = {r.key.decode(): r.value.decode() for r in consumer}
    consumer.close()
    assert received == {str(i): f"EMOJI-{i}" for i in range(20)}
