"""Cost on each materialization: `@metered` puts an estimate of what producing the asset cost into
its materialization metadata, so the Dagster UI plots cost and node-seconds per asset.

The estimate is the asset's own compute time times the run's share of its pool's nodes (by its
requests) at the pool's configured price. The ledger's exact figures (attributed from real node
lifetimes when the run ends) arrive later, as observations with the same keys."""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue

from dpe_dagster.tags import TagError, pool_request
from dpe_dagster.usage.records import ASSET_COST, ASSET_COST_BASIS, ASSET_NODE_SECONDS, ASSET_POOL, shown


def estimate(tags: dict[str, str], seconds: float) -> dict[str, Any]:
    from dpe_dagster.environment import current
    from dpe_dagster.usage.spans import node_share

    env = current()
    try:
        request = pool_request(tags, env)
    except TagError:
        request = None
    if request is None:
        return {}
    pool = env.pools[request.pool]
    node_seconds = seconds * node_share(request.cpus, request.memory_gb, pool)
    return {
        ASSET_COST: shown(ASSET_COST, node_seconds / 3600 * pool.price_per_node_hour),
        ASSET_NODE_SECONDS: shown(ASSET_NODE_SECONDS, node_seconds),
        ASSET_POOL: MetadataValue.text(pool.name),
        ASSET_COST_BASIS: MetadataValue.text("estimate: step time x requested share x configured price"),
    }


def metered(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an asset function that returns a MaterializeResult (or None)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        result = fn(*args, **kwargs)
        context = AssetExecutionContext.get()
        extra = estimate(dict(context.run.tags), time.monotonic() - start)
        if result is None:
            return MaterializeResult(metadata=extra)
        if isinstance(result, MaterializeResult):
            return result._replace(metadata={**(result.metadata or {}), **extra})
        context.add_output_metadata(extra)
        return result

    return wrapper
