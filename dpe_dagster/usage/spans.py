"""A pool's runs and nodes over a window, as the spans attribution charges (`attribution.py`):
runs from Dagster's run storage, by their requests; removed nodes from the ledger, live ones from
the provider. The ledger charges runs with them, and pods alongside runs (`pods.py`)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Iterable

from dagster import DagsterInstance, RunsFilter
from dagster._core.storage.dagster_run import RunRecord

from dpe_dagster import packing
from dpe_dagster.config import Environment, PoolConfig
from dpe_dagster.pools.base import Node
from dpe_dagster.runs import ACTIVE_STATUSES
from dpe_dagster.tags import POOL_TAG, TagError, pool_request, request_on
from dpe_dagster.usage.attribution import NodeSpan, RunSpan
from dpe_dagster.usage.eventlog import read_node_lifetimes
from dpe_dagster.usage.pricing import Price

Pricer = Callable[[PoolConfig, Node], Price]


def node_share(cpus: float, memory_gb: float, pool: PoolConfig) -> float:
    """Nodes of the pool's shape a run's requests occupy: a fraction of what runs can have of one
    node when it fits on one, whole nodes when it does not."""
    return packing.node_share(cpus, memory_gb, pool.room_cpus, pool.room_memory_gb)


def run_span(record: RunRecord, env: Environment, now: float) -> RunSpan | None:
    try:
        request = pool_request(record.dagster_run.tags, env)
    except TagError:
        return None  # never placed: it used nothing
    if request is None:
        return None
    return pool_run_span(record, env.pools[request.pool], now)


def pool_run_span(record: RunRecord, pool: PoolConfig, now: float) -> RunSpan | None:
    """The span of a run on `pool`, the pool its tags name; None if it never started."""
    try:
        request = request_on(record.dagster_run.tags, pool)
    except TagError:
        return None
    if record.start_time is None:
        return None
    share = node_share(request.cpus, request.memory_gb, pool)
    return RunSpan(record.dagster_run.run_id, pool.name, share, record.start_time, record.end_time or now)


def runs_overlapping(instance: DagsterInstance, pool: str, since: float) -> list[RunRecord]:
    ended = instance.get_run_records(RunsFilter(tags={POOL_TAG: pool},
                                                updated_after=datetime.fromtimestamp(since, timezone.utc)))
    active = instance.get_run_records(RunsFilter(tags={POOL_TAG: pool}, statuses=ACTIVE_STATUSES))
    return list({r.dagster_run.run_id: r for r in (*ended, *active)}.values())


def node_spans(instance: DagsterInstance, env: Environment, pool: str, since: float, until: float,
               live: Iterable[Node], pricer: Pricer,
               described: dict[str, dict[str, str]] | None = None) -> list[tuple[NodeSpan, str]]:
    """Every node of the pool alive at some time in [since, until): removed ones from the ledger,
    live ones from the provider. Returned with their price source; `described`, if given, gets
    each node's id, instance type, lifecycle and zone."""
    spans = []
    described = {} if described is None else described
    for lifetime in read_node_lifetimes(instance, since=since):
        if lifetime.pool == pool:
            spans.append((NodeSpan(lifetime.node_id, pool, lifetime.price_per_node_hour, lifetime.launched_at,
                                   lifetime.removed_at), lifetime.price_source))
            # a node's lifetime does not record its zone
            described[lifetime.node_id] = _described(lifetime.node_id, lifetime.instance_type, lifetime.lifecycle, "")
    for node in live:
        price = pricer(env.pools[pool], node)
        spans.append((NodeSpan(node.id, pool, price.usd_per_hour, node.launched_at, until), price.source))
        described[node.id] = _described(node.id, node.instance_type, node.lifecycle, node.zone)
    return spans


def _described(node_id: str, instance_type: str | None, lifecycle: str | None, zone: str | None) -> dict[str, str]:
    return {"node_id": node_id, "instance_type": instance_type or "", "lifecycle": lifecycle or "", "zone": zone or ""}
