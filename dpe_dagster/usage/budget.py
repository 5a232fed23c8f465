"""Daily budgets per pool: once a pool has paid its budget today (UTC), it stops scaling up, its
queued runs are held in the queue with a visible reason, and one alert is written; it resumes the
next day, or as soon as the budget is raised.

Runs are held through Dagster's own run queue: the instance's run coordinator never dequeues a run
tagged `dpe/hold=budget` (a tag concurrency limit of 0, see `dpe_dagster.instance`)."""

from __future__ import annotations

from dagster import AssetKey, AssetObservation, DagsterInstance, DagsterRunStatus, MetadataValue, RunsFilter

from dpe_dagster.config import PoolConfig
from dpe_dagster.pools.base import Node
from dpe_dagster.tags import HOLD_REASON_TAG, HOLD_TAG, POOL_TAG
from dpe_dagster.usage.eventlog import observations, read_node_lifetimes
from dpe_dagster.usage.records import shown
from dpe_dagster.usage.spans import Pricer
from dpe_dagster.usage.summary import day_start
from dpe_dagster.usage.writes import write_once

BUDGET_HOLD = "budget"
RELEASED = "released"
BUDGET_ALERTS_KEY = AssetKey(["dpe", "budget_alerts"])


def spent_today(instance: DagsterInstance, pool: PoolConfig, live: list[Node], pricer: Pricer, now: float) -> float:
    """What the pool has paid since midnight UTC: removed nodes from the ledger, live ones priced now."""
    day = day_start(now)
    spent = 0.0
    for node in read_node_lifetimes(instance, since=day):
        if node.pool == pool.name:
            spent += node.price_per_node_hour * max(0.0, node.removed_at - max(node.launched_at, day)) / 3600
    for node in live:
        spent += pricer(pool, node).usd_per_hour * max(0.0, now - max(node.launched_at, day)) / 3600
    return spent


def budget_block(pool: PoolConfig, spent: float) -> str | None:
    if pool.daily_budget_usd is None or spent < pool.daily_budget_usd:
        return None
    return (f"pool {pool.name} has spent ${spent:.4f} of its daily budget of ${pool.daily_budget_usd:.4f}; "
            "it scales up again tomorrow (00:00 UTC) or when the budget is raised")


def hold_or_release(instance: DagsterInstance, pool: PoolConfig, block: str | None) -> list[str]:
    """Tag the pool's queued runs as held (block) or release held ones (no block). Returns run ids changed."""
    changed = []
    if block:
        for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.QUEUED], tags={POOL_TAG: pool.name})):
            if run.tags.get(HOLD_TAG) != BUDGET_HOLD:
                instance.add_run_tags(run.run_id, {HOLD_TAG: BUDGET_HOLD, HOLD_REASON_TAG: block})
                changed.append(run.run_id)
    else:
        for run in instance.get_runs(RunsFilter(tags={POOL_TAG: pool.name, HOLD_TAG: BUDGET_HOLD})):
            instance.add_run_tags(run.run_id, {HOLD_TAG: RELEASED, HOLD_REASON_TAG: "budget available again"})
            changed.append(run.run_id)
    return changed


def alert_once(instance: DagsterInstance, pool: PoolConfig, spent: float, block: str, now: float) -> bool:
    """One alert per pool per day, written to the event log; False if today's was already written."""

    def unwritten() -> bool:
        today = observations(instance, BUDGET_ALERTS_KEY, day_start(now))
        return not any(r.asset_observation.metadata["pool"].value == pool.name for r in today)

    def write(_: bool) -> bool:
        instance.report_runless_asset_event(AssetObservation(
            asset_key=BUDGET_ALERTS_KEY, description=block,
            metadata={"pool": MetadataValue.text(pool.name), "spent_usd": shown("spent_usd", spent),
                      "budget_usd": shown("budget_usd", pool.daily_budget_usd or 0.0),
                      "message": MetadataValue.text(block)},
        ))
        return True

    return bool(write_once(instance, unwritten, write))


def check_budget(instance: DagsterInstance, config: PoolConfig, nodes: list[Node], pricer: Pricer,
                 now: float) -> str | None:
    """The pool's budget block, if any (why it may not scale up now); holds or releases its queued
    runs and alerts once a day. The autoscaler and the launcher ask it before the pool grows."""
    if config.daily_budget_usd is None:
        return None
    spent = spent_today(instance, config, nodes, pricer, now)
    block = budget_block(config, spent)
    hold_or_release(instance, config, block)
    if block:
        alert_once(instance, config, spent, block, now)
    return block
