"""The team's own pipelines: one Spark asset on the `etl` pool."""

import dagster as dg

from dpe_dagster.spark.resource import SparkResource
from dpe_dagster.tags import pool_tags
from dpe_dagster.usage.metering import metered
from resources import Greeting


@dg.asset(tags=pool_tags("etl"))
@metered
def numbers(context: dg.AssetExecutionContext, spark: SparkResource, greeting: Greeting) -> dg.MaterializeResult:
    total = spark.session().range(1000).groupBy().sum("id").collect()[0][0]
    context.log.info(f"{greeting.text}: {total}")
    return dg.MaterializeResult(metadata={"total": total})


numbers_job = dg.define_asset_job("numbers_job", selection=[numbers], tags=pool_tags("etl", cpus=2),
                                  executor_def=dg.in_process_executor)
