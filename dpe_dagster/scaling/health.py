"""Pool health as an asset check on `dpe/node_usage`: it fails while a pool could not be sized on
the autoscaler's last tick for it, naming the pool and the error (the other pools are still sized).

The autoscaler reports it whenever a pool starts or stops failing, without a run; it can also be
executed from the UI, reading the failures the autoscaler saved in its cursor and asking each
failing pool's provider whether it answers again."""

from datetime import datetime, timezone
from typing import Collection, Mapping

from dagster import (
    AssetCheckEvaluation, AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, DagsterInstance,
    MetadataValue, asset_check,
)

from dpe_dagster.config import Environment
from dpe_dagster.pools import PoolError, open_pool
from dpe_dagster.usage.records import NODE_USAGE_KEY

POOL_HEALTH_CHECK = "pools_sized"


def pool_health(env: Environment, failures: Mapping[str, Mapping], answering: Collection[str] = ()) -> dict:
    """The check's outcome from the failures by pool. A failing pool whose provider answers again
    (`answering`) is recovering, to be sized on the next tick: WARN; any other failing pool: ERROR."""
    failing = {name: failures[name] for name in env.pools if name in failures}
    recovering = sorted(set(failing) & set(answering))
    if failing:
        description = "; ".join(
            f"pool {name} failed its last tick ({datetime.fromtimestamp(f['at'], timezone.utc):%Y-%m-%d %H:%M:%S} "
            f"UTC): {f['error']}" + (" (its provider answers again: recovering)" if name in recovering else "")
            for name, f in sorted(failing.items()))
    else:
        description = f"every pool sized on its last tick ({', '.join(env.pools) or 'no pools'})"
    return {
        "passed": not failing, "description": description,
        "severity": AssetCheckSeverity.WARN if failing and len(recovering) == len(failing) else AssetCheckSeverity.ERROR,
        "metadata": {"failing_pools": MetadataValue.json(sorted(failing)),
                     "recovering_pools": MetadataValue.json(recovering),
                     "errors": MetadataValue.json({name: f["error"] for name, f in failing.items()}),
                     "pools_sized": MetadataValue.int(len(env.pools) - len(failing))},
    }


def report_pool_health(instance: DagsterInstance, env: Environment, failures: Mapping[str, Mapping]) -> None:
    """Called by the autoscaler right after a tick: a pool that failed it is failing now (ERROR)."""
    instance.report_runless_asset_event(AssetCheckEvaluation(asset_key=NODE_USAGE_KEY, check_name=POOL_HEALTH_CHECK,
                                                             **pool_health(env, failures)))


def _answers(env: Environment, name: str) -> bool:
    try:
        open_pool(env.pools[name], env).target()
    except PoolError:
        return False
    return True


def build_pool_health_check(env: Environment):
    @asset_check(asset=NODE_USAGE_KEY, name=POOL_HEALTH_CHECK,
                 description="Fails while the autoscaler could not size a pool, naming the pool and the error "
                             "(WARN when the pool's provider answers again).")
    def pools_sized(context: AssetCheckExecutionContext) -> AssetCheckResult:
        from dpe_dagster.scaling.cursor import read_failures

        failures = read_failures(context.instance)
        answering = [name for name in env.pools if name in failures and _answers(env, name)]
        return AssetCheckResult(**pool_health(env, failures, answering))

    return pools_sized
