"""Spark standalone workers on this machine as a node pool."""
