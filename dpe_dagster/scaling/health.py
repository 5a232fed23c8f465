"""Pool health as an asset check on `dpe/node_usage`: it fails while a pool could not be sized on
the autoscaler's last tick for it, naming the pool and the error (the other pools are still sized).

The autoscaler reports it whenever a pool starts or stops failing, without a run; it can also be
executed from the UI, reading the failures the autoscaler saved in its cursor."""

from datetime import datetime, timezone
from typing import Mapping

from dagster import (
    AssetCheckEvaluation, AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, DagsterInstance,
    MetadataValue, asset_check,
)

from dpe_dagster.config import Environment
from dpe_dagster.usage.records import NODE_USAGE_KEY

POOL_HEALTH_CHECK = "pools_sized"


def pool_health(env: Environment, failures: Mapping[str, Mapping]) -> dict:
    """passed, description and metadata of the check, from the failures by pool."""
    failing = {name: failures[name] for name in env.pools if name in failures}
    if failing:
        description = "; ".join(
            f"pool {name} not sized since {datetime.fromtimestamp(f['at'], timezone.utc):%Y-%m-%d %H:%M:%S} UTC: "
            f"{f['error']}" for name, f in sorted(failing.items()))
    else:
        description = f"every pool sized on its last tick ({', '.join(env.pools) or 'no pools'})"
    return {
        "passed": not failing, "description": description,
        "metadata": {"failing_pools": MetadataValue.json(sorted(failing)),
                     "errors": MetadataValue.json({name: f["error"] for name, f in failing.items()}),
                     "pools_sized": MetadataValue.int(len(env.pools) - len(failing))},
    }


def report_pool_health(instance: DagsterInstance, env: Environment, failures: Mapping[str, Mapping]) -> None:
    instance.report_runless_asset_event(AssetCheckEvaluation(
        asset_key=NODE_USAGE_KEY, check_name=POOL_HEALTH_CHECK, severity=AssetCheckSeverity.ERROR,
        **pool_health(env, failures)))


def build_pool_health_check(env: Environment):
    @asset_check(asset=NODE_USAGE_KEY, name=POOL_HEALTH_CHECK,
                 description="Fails while the autoscaler could not size a pool, naming the pool and the error.")
    def pools_sized(context: AssetCheckExecutionContext) -> AssetCheckResult:
        from dpe_dagster.scaling.sensor import read_failures

        return AssetCheckResult(severity=AssetCheckSeverity.ERROR, **pool_health(env, read_failures(context.instance)))

    return pools_sized
