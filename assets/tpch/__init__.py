"""TPC-H on PySpark: tables from tpchgen-cli, four queries, each checked against DuckDB."""

from dagster import AssetSelection, ScheduleDefinition, DefaultScheduleStatus, define_asset_job, in_process_executor

from assets.tpch.checks import QUERY_CHECKS
from assets.tpch.queries import GROUP, POOL, QUERY_ASSETS, tpch_tables
from dpe_dagster.tags import pool_tags

ASSETS = [tpch_tables, *QUERY_ASSETS]
CHECKS = QUERY_CHECKS

# One process and one Spark session for the whole run: the steps share the driver JVM.
tpch_job = define_asset_job(
    "tpch",
    selection=AssetSelection.groups(GROUP),
    tags=pool_tags(POOL, cpus=2),
    executor_def=in_process_executor,
    description="Generate the TPC-H tables and compute Q1, Q3, Q5, Q6 on the spot-etl pool.",
)

tpch_daily = ScheduleDefinition(
    name="tpch_daily",
    job=tpch_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
)
