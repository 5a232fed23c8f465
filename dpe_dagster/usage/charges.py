"""What the ledger charges: a run's usage record (its share of the pool's nodes, split over the
assets it planned) and a leaving node's busy seconds. The arithmetic is attribution's
(`attribution.py`) and the split by step time below; the inputs are read from Dagster's run
storage, the event log's node lifetimes and the provider's live nodes. Nothing here writes."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable, Iterable, Mapping, Sequence

from dagster import AssetKey, DagsterEventType, DagsterInstance
from dagster._core.storage.dagster_run import RunRecord

from dpe_dagster.config import Environment, PoolConfig
from dpe_dagster.pools.base import Node
from dpe_dagster.tags import POOL_TAG, TEAM_TAG, pool_request
from dpe_dagster.usage.attribution import NodeSpan, attribute, node_busy_seconds
from dpe_dagster.usage.eventlog import read_node_lifetimes
from dpe_dagster.usage.pricing import CONFIG
from dpe_dagster.usage.records import UNASSIGNED, UsageRecord
from dpe_dagster.usage.spans import Pricer, node_spans, pool_run_span, run_span, runs_overlapping

STEP_EVENTS = {DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE,
               DagsterEventType.ASSET_MATERIALIZATION_PLANNED}
Owners = Callable[[AssetKey], Sequence[str]]


def _steps(instance: DagsterInstance, run_id: str) -> tuple[dict[str, float], dict[AssetKey, str | None]]:
    """Seconds spent in each step, and the step that plans each asset."""
    started: dict[str, float] = {}
    seconds: dict[str, float] = defaultdict(float)
    planned: dict[AssetKey, str | None] = {}
    for r in instance.get_records_for_run(run_id, of_type=STEP_EVENTS, limit=100_000).records:
        entry = r.event_log_entry
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
            planned[event.asset_key] = entry.step_key
        elif event.event_type == DagsterEventType.STEP_START:
            started[entry.step_key] = entry.timestamp
        elif entry.step_key in started:
            seconds[entry.step_key] += entry.timestamp - started.pop(entry.step_key)
    return dict(seconds), planned


def split_by_step_time(cost: float, node_seconds: float, seconds: Mapping[str, float],
                       planned: Mapping[AssetKey, str | None]) -> dict[AssetKey, tuple[float, float]]:
    """The run's cost per asset: each step's share of the run's step time, split evenly among the
    assets that step plans; a run that ran no step splits evenly among its planned assets."""
    if not planned:
        return {}
    by_step: dict[str | None, list[AssetKey]] = defaultdict(list)
    for key, step in planned.items():
        by_step[step].append(key)
    total = sum(seconds.get(step, 0.0) for step in by_step)
    out = {}
    for step, keys in by_step.items():
        weight = seconds.get(step, 0.0) / total if total > 0 else len(keys) / len(planned)
        for key in keys:
            out[key] = (cost * weight / len(keys), node_seconds * weight / len(keys))
    return out


def _team_of(key: AssetKey, run_team: str | None, owners: Owners | None) -> str:
    for owner in (owners(key) if owners else ()):
        if owner.startswith("team:"):
            return owner.removeprefix("team:")
    return run_team or UNASSIGNED


def usage_for_run(instance: DagsterInstance, record: RunRecord, env: Environment, live: Mapping[str, list[Node]],
                  pricer: Pricer, owners: Owners | None = None, now: float | None = None) -> UsageRecord:
    """What a run was charged, by the attribution rules in `attribution.py`."""
    now = time.time() if now is None else now
    run = record.dagster_run
    pool_name = run.tags.get(POOL_TAG, "")
    pool = env.pools.get(pool_name)
    span = run_span(record, env, now)
    cpus = memory = share = node_seconds = cost = 0.0
    sources: set[str] = set()
    used: list[dict[str, str]] = []
    if span is not None:
        request = pool_request(run.tags, env)
        cpus, memory, share = request.cpus, request.memory_gb, span.share
        runs = [s for r in runs_overlapping(instance, pool_name, span.start) if (s := run_span(r, env, now))]
        described: dict[str, dict[str, str]] = {}
        nodes = node_spans(instance, env, pool_name, span.start, span.end, live.get(pool_name, []), pricer, described)
        charges, _ = attribute(runs, [n for n, _ in nodes], since=span.start, until=span.end)
        charge = charges.get(run.run_id)
        if charge is not None:
            node_seconds, cost = charge.node_seconds, charge.cost
        sources = {source for n, source in nodes if n.start < span.end and n.end > span.start}
        used = [described[i] for i in sorted({n.node_id for n, _ in nodes if n.start < span.end and n.end > span.start})]
    seconds, planned = _steps(instance, run.run_id)
    run_team = run.tags.get(TEAM_TAG)
    asset_costs = {
        key.to_user_string(): {"cost_usd": c, "node_seconds": ns, "team": _team_of(key, run_team, owners)}
        for key, (c, ns) in split_by_step_time(cost, node_seconds, seconds, planned).items()
    }
    teams = {v["team"] for v in asset_costs.values()}
    return UsageRecord(
        run_id=run.run_id,
        job_name=run.job_name,
        pool=pool_name,
        team=run_team or (teams.pop() if len(teams) == 1 else UNASSIGNED),
        status=run.status.value,
        cpus=cpus,
        memory_gb=memory,
        node_share=share,
        node_seconds=node_seconds,
        price_per_node_hour=cost / node_seconds * 3600 if node_seconds else (pool.price_per_node_hour if pool else 0.0),
        price_source="+".join(sorted(sources)) or CONFIG,
        cost_usd=cost,
        started_at=record.start_time,
        ended_at=record.end_time,
        lifecycle=pool.lifecycle if pool else "",
        assets=tuple(sorted(asset_costs)),
        asset_costs=asset_costs,
        nodes=tuple(used),
    )


def charged_busy_seconds(instance: DagsterInstance, pool: PoolConfig, node: NodeSpan, alive: Iterable[NodeSpan],
                         now: float | None = None) -> float:
    """A leaving node's busy seconds: the node-seconds runs were charged on it, from the runs and
    nodes that charge the runs (`attribution.node_busy_seconds`). `alive`: the pool's nodes not in
    the ledger yet (the provider's), ending when `node` does."""
    now = time.time() if now is None else now
    runs = [s for r in runs_overlapping(instance, pool.name, node.start) if (s := pool_run_span(r, pool, now))]
    spans = {(n.node_id, n.launched_at): NodeSpan(n.node_id, pool.name, n.price_per_node_hour, n.launched_at, n.removed_at)
             for n in read_node_lifetimes(instance, since=node.start) if n.pool == pool.name}
    spans.update({(n.node_id, n.start): n for n in alive})
    return node_busy_seconds(runs, spans.values(), node)
