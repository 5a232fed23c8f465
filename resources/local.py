"""`local`: the whole cycle on one machine. The pool is Spark standalone workers started and
stopped on demand; the Dagster instance is SQLite under `.dpe/dagster`.

Prices are what the same node would cost in the cloud, so the ledger shows realistic money:
one 1-vCPU/1.5-GiB node is priced as half of an m6i.large spot instance (m6i.large is 2 vCPU;
spot about $0.035/h in us-east-1, on-demand $0.096/h, 2026)."""

from __future__ import annotations

import os

from dpe_dagster.config import ConfigError


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be a number; got {raw!r}") from None


def environment() -> dict:
    return {
        "sensor_interval_s": 5,
        "max_concurrent_runs": 2,
        "tpch_scale_factor": _float_env("DPE_TPCH_SCALE_FACTOR", 0.01),
        "pools": {
            "spot-etl": {
                "provider": "local",
                "min_size": 0,
                "max_size": 2,
                "node_cpus": 1,
                "node_memory_gb": 1.5,
                "lifecycle": "spot",
                "price_per_node_hour": 0.0175,
                "idle_timeout_s": _float_env("DPE_IDLE_TIMEOUT_S", 20),
                "boot_timeout_s": 120,
                "default_run_cpus": 2,
                "default_run_memory_gb": 2,
                "labels": {"dpe.io/pool": "spot-etl"},
            },
        },
        # No `master`: runs use the Spark master of the local pool they are tagged with.
        "spark": {
            "conf": {
                "spark.executor.memory": "1g",
                "spark.executor.cores": "1",
                "spark.sql.shuffle.partitions": "4",
            },
        },
    }
