"""The usage ledger, kept in Dagster's event log and read back only from there.

A run's record is an observation of the `dpe/run_usage` asset written into that run's own event
log, so the run page shows it and the asset's history lists every run; each asset the run planned
gets an observation with its part of the cost. Each is written once: the check for an existing
record and the write happen under a lock shared by every writer of the instance, so repeated,
replayed or concurrent ticks neither lose nor double a record.

A node lost under a run (gone from the provider before the record was written, and recorded by
the autoscaler only after) is charged by an amendment: a second, complete record of the run that
names the nodes it adds (`AMENDS`) and replaces the first for every reader (`read_run_usage`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

from dagster import AssetKey, AssetObservation, DagsterEventType, DagsterInstance, MetadataValue
from dagster._core.storage.dagster_run import RunRecord

from dpe_dagster.config import Environment, PoolConfig
from dpe_dagster.pools.base import Node
from dpe_dagster.tags import POOL_TAG, TEAM_TAG, pool_request
from dpe_dagster.usage.attribution import NodeSpan, attribute, node_busy_seconds
from dpe_dagster.lock import instance_lock
from dpe_dagster.usage.eventlog import observation_event, observations, read_node_lifetimes
from dpe_dagster.usage.pods import read_pod_usage
from dpe_dagster.usage.pricing import CONFIG
from dpe_dagster.usage.records import (
    ASSET_COST, ASSET_NODE_SECONDS, ASSET_POOL, ASSET_RUN_ID, ASSET_TEAM, RUN_USAGE_KEY, UNASSIGNED, NodeLifetime,
    UsageRecord,
)
from dpe_dagster.usage.spans import Pricer, node_spans, pool_run_span, run_span, runs_overlapping

AMENDS = "dpe/amends"  # on an amending record: the nodes it adds, and why
# A node's removal time comes from the autoscaler's clock, a record's time from the ledger
# writer's: the records a late node may belong to are looked for from this much before it.
CLOCK_MARGIN_S = 3600.0
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


def _recorded_keys(instance: DagsterInstance, run_id: str) -> set[AssetKey]:
    """Asset keys that already carry this run's ledger observations."""
    found = set()
    for r in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_OBSERVATION, limit=100_000).records:
        event = r.event_log_entry.dagster_event
        if event is None:
            continue
        observation = event.event_specific_data.asset_observation
        if observation.asset_key == RUN_USAGE_KEY or ASSET_COST in observation.metadata:
            found.add(observation.asset_key)
    return found


def record_run_usage(instance: DagsterInstance, record: RunRecord, env: Environment, live: Mapping[str, list[Node]],
                     pricer: Pricer, owners: Owners | None = None) -> UsageRecord | None:
    """Write the run's usage record and its per-asset parts, each at most once. Returns the record
    if this call wrote it, None if it was already there."""
    run = record.dagster_run
    with instance_lock(instance, "ledger"):
        done = _recorded_keys(instance, run.run_id)
        if RUN_USAGE_KEY in done and all(AssetKey.from_user_string(a) in done for a in _planned(instance, run.run_id)):
            return None
        usage = usage_for_run(instance, record, env, live, pricer, owners)
        wrote = RUN_USAGE_KEY not in done
        _write(instance, run.job_name, usage, done, f"run {run.run_id} on pool {usage.pool}")
        return usage if wrote else None


def _write(instance: DagsterInstance, job_name: str, usage: UsageRecord, done: set[AssetKey], description: str,
           extra: Mapping[str, Any] | None = None) -> None:
    """The run's record and its per-asset parts, but for the keys in `done`."""
    if RUN_USAGE_KEY not in done:
        observation = AssetObservation(asset_key=RUN_USAGE_KEY, metadata={**usage.to_metadata(), **(extra or {})},
                                       description=description)
        instance.report_dagster_event(observation_event(job_name, observation), run_id=usage.run_id)
    for name, part in usage.asset_costs.items():
        key = AssetKey.from_user_string(name)
        if key in done:
            continue
        observation = AssetObservation(asset_key=key, metadata={
            ASSET_COST: MetadataValue.float(part["cost_usd"]),
            ASSET_NODE_SECONDS: MetadataValue.float(part["node_seconds"]),
            ASSET_RUN_ID: MetadataValue.text(usage.run_id),
            ASSET_POOL: MetadataValue.text(usage.pool),
            ASSET_TEAM: MetadataValue.text(part["team"]),
            **(extra or {}),
        })
        instance.report_dagster_event(observation_event(job_name, observation), run_id=usage.run_id)


def _overlaps(record: UsageRecord, lifetime: NodeLifetime) -> bool:
    return (record.started_at is not None and record.ended_at is not None
            and lifetime.launched_at < record.ended_at and lifetime.removed_at > record.started_at)


def amend_for_late_nodes(instance: DagsterInstance, env: Environment, pool: str,
                         lifetimes: Sequence[tuple[int, NodeLifetime]], live: Mapping[str, list[Node]],
                         pricer: Pricer, owners: Owners | None = None) -> list[UsageRecord]:
    """Amend each written record of the pool that a node lifetime (with its storage id) recorded
    after it was alive under, when the record does not name that node (it was then neither listed
    by the provider nor in the ledger). The amendment names the nodes it adds, so each record is
    amended at most once per late node."""
    lifetimes = [(sid, n) for sid, n in lifetimes if n.pool == pool]
    if not lifetimes:
        return []
    amended = []
    with instance_lock(instance, "ledger"):
        # A record written while the node was listed names it: only later ones can lack it.
        since = min(n.removed_at for _, n in lifetimes) - CLOCK_MARGIN_S
        for written_at, old in _latest_run_usage(instance, since).values():
            if old.pool != pool:
                continue
            named = {node["node_id"] for node in old.nodes}
            late = [n for sid, n in lifetimes if sid > written_at and n.node_id not in named and _overlaps(old, n)]
            record = instance.get_run_record_by_id(old.run_id) if late else None
            if record is None:
                continue
            usage = usage_for_run(instance, record, env, live, pricer, owners)
            added = sorted({node["node_id"] for node in usage.nodes} - named)
            if not added:
                continue
            why = f"node(s) {', '.join(added)} alive under the run, recorded after its record"
            _write(instance, record.dagster_run.job_name, usage, set(), f"run {usage.run_id} on pool {pool}, "
                   f"amended: {why}", {AMENDS: MetadataValue.text(why)})
            amended.append(usage)
    return amended


def _planned(instance: DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
                                           limit=100_000).records
    return [r.event_log_entry.dagster_event.asset_key.to_user_string() for r in records
            if r.event_log_entry.dagster_event]


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


def _latest_run_usage(instance: DagsterInstance, since: float | None) -> dict[str, tuple[int, UsageRecord]]:
    latest: dict[str, tuple[int, UsageRecord]] = {}
    for r in observations(instance, RUN_USAGE_KEY, since):
        record = UsageRecord.from_metadata(r.asset_observation.metadata)
        latest.pop(record.run_id, None)  # keeps the order of the latest writes
        latest[record.run_id] = (r.storage_id, record)
    return latest


def read_run_usage(instance: DagsterInstance, since: float | None = None) -> list[UsageRecord]:
    """One record per run: its latest (an amendment replaces the record it amends)."""
    return [record for _, record in _latest_run_usage(instance, since).values()]


def read_usage(instance: DagsterInstance, since: float | None = None) -> list[UsageRecord]:
    """Everything charged: runs, and the containers (pods) that assets ran on pools."""
    return read_run_usage(instance, since) + read_pod_usage(instance, since)


