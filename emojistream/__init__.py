"""Shared code of the emoji reaction pipeline: configuration, Kafka clients, message formats."""
