"""`prod`: as staging (see resources/staging.py), with larger pools and a longer idle timeout: a
warm node saves a boot for the next run of a busy schedule."""

from __future__ import annotations

from resources.staging import cluster_environment


def environment() -> dict:
    return cluster_environment("prod", spot_max=20, ondemand_max=6, idle_timeout_s=600)
