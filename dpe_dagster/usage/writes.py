"""Every write of the usage ledger into Dagster's event log, and the one rule that writes each
record once (`write_once`).

A run's record is an observation of the `dpe/run_usage` asset written into that run's own event
log, so the run page shows it and the asset's history lists every run; each asset the run planned
gets an observation with its part of the cost. A removed node's lifetime is a runless observation
of `dpe/node_usage`. A container pod's record (`pods.py`) and a pool's budget alert (`budget.py`)
are written by the same rule.

A node lost under a run (gone from the provider before the record was written, and recorded by
the autoscaler only after) is charged by an amendment: a second, complete record of the run that
names the nodes it adds (`AMENDS`) and replaces the first for every reader
(`eventlog.read_run_usage`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence, TypeVar

from dagster import AssetKey, AssetObservation, DagsterEventType, DagsterInstance, MetadataValue
from dagster._core.events import AssetObservationData, DagsterEvent
from dagster._core.storage.dagster_run import RunRecord

from dpe_dagster.config import Environment
from dpe_dagster.lock import instance_lock
from dpe_dagster.pools.base import Node
from dpe_dagster.usage.charges import Owners, usage_for_run
from dpe_dagster.usage.eventlog import latest_run_usage, read_node_lifetimes
from dpe_dagster.usage.records import (
    ASSET_COST, ASSET_NODE_SECONDS, ASSET_POOL, ASSET_RUN_ID, ASSET_TEAM, NODE_USAGE_KEY, RUN_USAGE_KEY, NodeLifetime,
    UsageRecord, shown,
)
from dpe_dagster.usage.spans import Pricer

AMENDS = "dpe/amends"  # on an amending record: the nodes it adds, and why
# A node's removal time comes from the autoscaler's clock, a record's time from the ledger
# writer's: the records a late node may belong to are looked for from this much before it.
CLOCK_MARGIN_S = 3600.0
LEDGER_LOCK = "ledger"  # the instance lock (`lock.instance_lock`) every writer of the ledger shares

Unwritten = TypeVar("Unwritten")
Written = TypeVar("Written")


def write_once(instance: DagsterInstance, unwritten: Callable[[], Unwritten],
               write: Callable[[Unwritten], Written]) -> Written | None:
    """The ledger's write-once rule: under the lock every writer of the instance shares, read what
    of a record is not in the event log yet (`unwritten`; falsy: nothing) and write just that
    (`write`). Repeated, replayed or concurrent writers then neither lose nor double a record.
    Returns what `write` returned; None if everything was written already."""
    with instance_lock(instance, LEDGER_LOCK):
        missing = unwritten()
        if not missing:
            return None
        return write(missing)


def observation_event(job_name: str, observation: AssetObservation) -> DagsterEvent:
    """The event that writes `observation` into a run's own event log."""
    return DagsterEvent(
        event_type_value=DagsterEventType.ASSET_OBSERVATION.value,
        job_name=job_name,
        event_specific_data=AssetObservationData(observation),
        message=f"dpe usage: {observation.asset_key.to_user_string()}",
    )


def record_node_lifetime(instance: DagsterInstance, lifetime: NodeLifetime) -> bool:
    """Write a removed node's lifetime once; False if it was already recorded."""

    def unwritten() -> bool:
        recent = read_node_lifetimes(instance, since=lifetime.removed_at - 1)
        return not any(n.node_id == lifetime.node_id and n.launched_at == lifetime.launched_at for n in recent)

    def write(_: bool) -> bool:
        instance.report_runless_asset_event(
            AssetObservation(asset_key=NODE_USAGE_KEY, metadata=lifetime.to_metadata(),
                             description=f"node {lifetime.node_id} of pool {lifetime.pool} removed")
        )
        return True

    return bool(write_once(instance, unwritten, write))


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


def _planned(instance: DagsterInstance, run_id: str) -> list[AssetKey]:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
                                           limit=100_000).records
    return [r.event_log_entry.dagster_event.asset_key for r in records if r.event_log_entry.dagster_event]


def record_run_usage(instance: DagsterInstance, record: RunRecord, env: Environment, live: Mapping[str, list[Node]],
                     pricer: Pricer, owners: Owners | None = None) -> UsageRecord | None:
    """Write the run's usage record and its per-asset parts, each at most once. Returns the record
    if this call wrote it, None if it was already there."""
    run = record.dagster_run

    def unwritten() -> set[AssetKey]:
        return {RUN_USAGE_KEY, *_planned(instance, run.run_id)} - _recorded_keys(instance, run.run_id)

    def write(missing: set[AssetKey]) -> UsageRecord | None:
        usage = usage_for_run(instance, record, env, live, pricer, owners)
        write_run_usage(instance, run.job_name, usage, f"run {run.run_id} on pool {usage.pool}", only=missing)
        return usage if RUN_USAGE_KEY in missing else None

    return write_once(instance, unwritten, write)


def write_run_usage(instance: DagsterInstance, job_name: str, usage: UsageRecord, description: str,
                    extra: Mapping[str, Any] | None = None, only: set[AssetKey] | None = None) -> None:
    """Write the run's record and its per-asset parts into its event log (`only`: just these keys)."""
    if only is None or RUN_USAGE_KEY in only:
        observation = AssetObservation(asset_key=RUN_USAGE_KEY, metadata={**usage.to_metadata(), **(extra or {})},
                                       description=description)
        instance.report_dagster_event(observation_event(job_name, observation), run_id=usage.run_id)
    for name, part in usage.asset_costs.items():
        key = AssetKey.from_user_string(name)
        if only is not None and key not in only:
            continue
        observation = AssetObservation(asset_key=key, metadata={
            ASSET_COST: shown(ASSET_COST, part["cost_usd"]),
            ASSET_NODE_SECONDS: shown(ASSET_NODE_SECONDS, part["node_seconds"]),
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

    def unwritten() -> list[tuple[RunRecord, UsageRecord, list[str]]]:
        """Each record to amend, its amendment, and the nodes the amendment adds."""
        out = []
        # A record written while the node was listed names it: only later ones can lack it.
        since = min(n.removed_at for _, n in lifetimes) - CLOCK_MARGIN_S
        for written_at, old in latest_run_usage(instance, since).values():
            if old.pool != pool:
                continue
            named = {node["node_id"] for node in old.nodes}
            late = [n for sid, n in lifetimes if sid > written_at and n.node_id not in named and _overlaps(old, n)]
            record = instance.get_run_record_by_id(old.run_id) if late else None
            if record is None:
                continue
            usage = usage_for_run(instance, record, env, live, pricer, owners)
            added = sorted({node["node_id"] for node in usage.nodes} - named)
            if added:
                out.append((record, usage, added))
        return out

    def write(amendments: list[tuple[RunRecord, UsageRecord, list[str]]]) -> list[UsageRecord]:
        for record, usage, added in amendments:
            why = f"node(s) {', '.join(added)} alive under the run, recorded after its record"
            write_run_usage(instance, record.dagster_run.job_name, usage,
                            f"run {usage.run_id} on pool {pool}, amended: {why}", {AMENDS: MetadataValue.text(why)})
        return [usage for _, usage, _ in amendments]

    return write_once(instance, unwritten, write) or []
