"""dpe's part of a Dagster code location, for one configuration: the autoscaler and ledger
sensors, the usage ledger's assets and checks, the platform usage report, and the resources dpe
provides (`spark`, `containers`). A project merges it with its own assets:

    defs = Definitions.merge(dpe_definitions(load_environment("pools.yaml")), my_definitions)

or adds it with the `dpe_dagster.NodePools` Component in a `dg` project's `defs.yaml`."""

from __future__ import annotations

from dagster import AssetSpec, Definitions

from dpe_dagster.config import Environment
from dpe_dagster.containers import pool_containers
from dpe_dagster.environment import use
from dpe_dagster.providers import provider
from dpe_dagster.scaling.cursor import read_busy_seconds
from dpe_dagster.scaling.health import build_pool_health_check
from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from dpe_dagster.spark.resource import SparkResource
from dpe_dagster.usage.budget import BUDGET_ALERTS_KEY
from dpe_dagster.usage.platform_report import build_platform_usage, platform_usage_daily, platform_usage_job
from dpe_dagster.usage.records import NODE_USAGE_KEY, RUN_USAGE_KEY
from dpe_dagster.usage.sensor import build_ledger_sensor

LEDGER_ASSETS = [
    AssetSpec(RUN_USAGE_KEY, group_name="dpe_platform", kinds={"dagster"},
              description="The usage ledger: one observation per ended run (node-seconds, price, cost)."),
    AssetSpec(NODE_USAGE_KEY, group_name="dpe_platform", kinds={"dagster"},
              description="Node lifetimes: one observation per removed node (busy and idle seconds, cost)."),
    AssetSpec(BUDGET_ALERTS_KEY, group_name="dpe_platform", kinds={"dagster"},
              description="One observation per pool and day on which the pool spent its daily budget."),
]


def spark_master(env: Environment) -> str:
    """Where runs' Spark sessions connect: `spark.master`, else the master of the first pool that
    provides one (a local pool)."""
    if env.spark.master:
        return env.spark.master
    for pool in env.pools.values():
        master = provider(pool.provider).spark_master(pool)
        if master:
            return master
    raise ValueError(f"environment {env.name}: spark.master is required when no pool provides a Spark master")


def dpe_definitions(env: Environment) -> Definitions:
    """Everything dpe adds to a code location for `env`; `env` also becomes this process's
    configuration (`dpe_dagster.environment.current`), read by `@metered` and the resources."""
    use(env)
    boot_timeout = max(p.boot_timeout_s for p in env.pools.values())
    return Definitions(
        assets=[*LEDGER_ASSETS, build_platform_usage(env, read_busy_seconds)],
        asset_checks=[build_pool_health_check(env)],
        jobs=[platform_usage_job],
        schedules=[platform_usage_daily],
        sensors=[build_autoscaler_sensor(env), build_ledger_sensor(env)],
        resources={
            "spark": SparkResource(master=spark_master(env), conf=env.spark.conf, executor_conf=env.spark.executor_conf,
                                   wait_for_master_s=boot_timeout,
                                   default_run_cpus={p.name: p.default_run_cpus for p in env.pools.values()}),
            "containers": pool_containers(env),
        },
    )
