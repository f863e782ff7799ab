"""Launchers for the real components lakeserve runs on loopback: Kafka, MLflow UI, Redis."""
