"""`aws-sim`: the whole cycle with the `aws_asg` provider against an AWS API emulator on loopback.

`dpe demo` starts the emulator (moto's server) and creates one Auto Scaling group per pool below,
at its minimum size; nothing here can reach a real AWS account (`aws.emulator` makes the provider
refuse any endpoint that is not on loopback). Spark runs in local mode in the run's process, so a
simulated instance holds no real work: an instance is busy while an active run is placed on it
(see `dpe_dagster.pools.aws.run_model.busy_from_dagster_runs`). Runs start as local subprocesses
(the instance's run launcher is the local one): there is no Kubernetes here.

Prices are us-east-1 list prices for the instance types the groups launch (2 vCPU / 8 GiB:
m6i.large and peers; spot about $0.035/h, on-demand $0.096/h, 2026)."""

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


SPOT_TYPES = ["m6i.large", "m5.large", "m5a.large", "m6a.large", "m7i.large"]


def environment() -> dict:
    return {
        "sensor_interval_s": 5,
        "max_concurrent_runs": 2,
        "aws": {"region": "us-east-1", "emulator": True, "retry_mode": "standard", "max_attempts": 5},
        "pools": {
            "spot-etl": {
                "provider": "aws_asg",
                "min_size": 0,
                "max_size": 3,
                "node_cpus": 2,
                "node_memory_gb": 8,
                "lifecycle": "spot",
                "price_per_node_hour": 0.035,
                "idle_timeout_s": _float_env("DPE_IDLE_TIMEOUT_S", 20),
                "boot_timeout_s": 120,
                "default_run_cpus": 2,
                "default_run_memory_gb": 4,
                "fallback": "ondemand-etl",
                "backoff_s": 300,
                "labels": {"dpe.io/pool": "spot-etl"},
                "taints": [{"key": "dpe.io/pool", "value": "spot-etl", "effect": "NoSchedule"}],
                "settings": {"group_name": "dpe-sim-spot-etl", "busy_source": "dagster_runs",
                             "instance_types": SPOT_TYPES},
            },
            "ondemand-etl": {
                "provider": "aws_asg",
                "min_size": 0,
                "max_size": 2,
                "node_cpus": 2,
                "node_memory_gb": 8,
                "lifecycle": "on-demand",
                "price_per_node_hour": 0.096,
                "idle_timeout_s": _float_env("DPE_IDLE_TIMEOUT_S", 20),
                "boot_timeout_s": 120,
                "default_run_cpus": 2,
                "default_run_memory_gb": 4,
                "labels": {"dpe.io/pool": "ondemand-etl"},
                "settings": {"group_name": "dpe-sim-ondemand-etl", "busy_source": "dagster_runs",
                             "instance_types": ["m6i.large", "m5.large"]},
            },
        },
        # Spark stays local: the simulated instances cannot run executors.
        "spark": {
            "master": "local[2]",
            "conf": {"spark.driver.memory": "1g", "spark.sql.shuffle.partitions": "4"},
        },
    }
