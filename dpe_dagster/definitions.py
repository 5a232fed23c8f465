"""The one Dagster entry point: the pipelines in `assets/`, wired to the environment `DPE_ENV` picks."""

from __future__ import annotations

from dagster import AssetSpec, Definitions

from assets.containers import ASSETS as CONTAINER_ASSETS, containers_job
from assets.tpch import ASSETS, CHECKS, tpch_daily, tpch_job
from assets.tpch.data import TpchData
from dpe_dagster.config import Environment
from dpe_dagster.containers import pool_containers
from dpe_dagster.paths import dpe_home
from dpe_dagster.pools.local.standalone import LocalSparkPool
from dpe_dagster.scaling.health import build_pool_health_check
from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from dpe_dagster.spark.resource import SparkResource
from dpe_dagster.usage.budget import BUDGET_ALERTS_KEY
from dpe_dagster.usage.platform_report import build_platform_usage, platform_usage_daily, platform_usage_job
from dpe_dagster.usage.records import NODE_USAGE_KEY, RUN_USAGE_KEY
from dpe_dagster.usage.sensor import build_ledger_sensor
from resources import load_environment

LEDGER_ASSETS = [
    AssetSpec(RUN_USAGE_KEY, group_name="dpe_platform", kinds={"dagster"},
              description="The usage ledger: one observation per ended run (node-seconds, price, cost)."),
    AssetSpec(NODE_USAGE_KEY, group_name="dpe_platform", kinds={"dagster"},
              description="Node lifetimes: one observation per removed node (busy and idle seconds, cost)."),
    AssetSpec(BUDGET_ALERTS_KEY, group_name="dpe_platform", kinds={"dagster"},
              description="One observation per pool and day on which the pool spent its daily budget."),
]


def spark_master(env: Environment) -> str:
    if "master" in env.spark:
        return env.spark["master"]
    local_pools = [p for p in env.pools.values() if p.provider == "local"]
    if not local_pools:
        raise ValueError(f"environment {env.name}: spark.master is required when no pool is local")
    return LocalSparkPool.from_config(local_pools[0]).master_url


def build_definitions(env: Environment) -> Definitions:
    boot_timeout = max(p.boot_timeout_s for p in env.pools.values())
    return Definitions(
        assets=[*ASSETS, *CONTAINER_ASSETS, *LEDGER_ASSETS, build_platform_usage(env)],
        asset_checks=[*CHECKS, build_pool_health_check(env)],
        jobs=[tpch_job, containers_job, platform_usage_job],
        schedules=[tpch_daily, platform_usage_daily],
        sensors=[build_autoscaler_sensor(env), build_ledger_sensor(env)],
        resources={
            "spark": SparkResource(master=spark_master(env), conf=env.spark.get("conf", {}),
                                   wait_for_master_s=boot_timeout,
                                   default_run_cpus={p.name: p.default_run_cpus for p in env.pools.values()}),
            "tpch": TpchData(scale_factor=env.tpch_scale_factor, root=str(dpe_home() / "data" / "tpch")),
            "containers": pool_containers(env.name),
        },
    )


defs = build_definitions(load_environment())
