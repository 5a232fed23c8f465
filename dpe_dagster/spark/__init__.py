"""Spark for dpe runs: the Dagster resource, Spark on Kubernetes settings, and finding Java."""
