"""`local`: the whole cycle on one machine. The pool is Spark standalone workers started and
stopped on demand; the Dagster instance is SQLite under `.dpe/dagster`.

A node is one worker of 2 CPUs running one 2-core executor: a run's tasks then share one executor
JVM (as they share one JVM in a plain `local[2]` script) instead of shuffling between two 1-core
executors, which measured 1.27x against 1.11x of plain PySpark at scale factor 5 (bench/RESULTS.md).

Prices are what the same node would cost in the cloud, so the ledger shows realistic money:
one 2-vCPU node is priced as an m6i.large spot instance (spot about $0.035/h in us-east-1,
on-demand $0.096/h, 2026)."""

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
                "node_cpus": 2,
                "node_memory_gb": 2.5,
                "lifecycle": "spot",
                "price_per_node_hour": 0.035,
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
                "spark.executor.memory": "2g",
                "spark.executor.cores": "2",
                "spark.sql.shuffle.partitions": "4",
            },
        },
    }
