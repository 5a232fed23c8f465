"""The ledger's observations in Dagster's event log: read back in pages, written into a run's own
log, and the node lifetimes (each written once, under the ledger lock every writer shares).

Every module of the ledger reads and writes through these, so the keys' pages, the event built for
a run's log and the once-only check of a node lifetime are written one way."""

from __future__ import annotations

from dagster import AssetKey, AssetObservation, AssetRecordsFilter, DagsterEventType, DagsterInstance
from dagster._core.events import AssetObservationData, DagsterEvent

from dpe_dagster.lock import instance_lock
from dpe_dagster.usage.records import NODE_USAGE_KEY, NodeLifetime

PAGE = 1000


def observations(instance: DagsterInstance, key: AssetKey, since: float | None = None):
    records_filter = AssetRecordsFilter(asset_key=key, after_timestamp=since) if since is not None else key
    for result in pages(instance.fetch_observations, records_filter, None):
        yield from result.records


def observations_after(instance: DagsterInstance, key: AssetKey, cursor: str | None) -> tuple[list, str | None]:
    """The observations of `key` written after `cursor` (None: all), oldest first, and the cursor
    to read on from: an incremental reader reads each record once."""
    out = []
    for result in pages(instance.fetch_observations, key, cursor):
        out.extend(result.records)
        cursor = result.cursor or cursor
    return out, cursor


def pages(fetch, records_filter, cursor: str | None):
    """The results of an instance's event-record fetch (`fetch_observations`,
    `fetch_run_status_changes`) page by page, oldest first, from `cursor` (None: the start)."""
    while True:
        result = fetch(records_filter, limit=PAGE, cursor=cursor, ascending=True)
        yield result
        if not result.has_more:
            return
        cursor = result.cursor


def observation_event(job_name: str, observation: AssetObservation) -> DagsterEvent:
    return DagsterEvent(
        event_type_value=DagsterEventType.ASSET_OBSERVATION.value,
        job_name=job_name,
        event_specific_data=AssetObservationData(observation),
        message=f"dpe usage: {observation.asset_key.to_user_string()}",
    )


def read_node_lifetimes(instance: DagsterInstance, since: float | None = None) -> list[NodeLifetime]:
    return [NodeLifetime.from_metadata(r.asset_observation.metadata)
            for r in observations(instance, NODE_USAGE_KEY, since)]


def record_node_lifetime(instance: DagsterInstance, lifetime: NodeLifetime) -> bool:
    """Write a removed node's lifetime once; False if it was already recorded."""
    with instance_lock(instance, "ledger"):
        recent = read_node_lifetimes(instance, since=lifetime.removed_at - 1)
        if any(n.node_id == lifetime.node_id and n.launched_at == lifetime.launched_at for n in recent):
            return False
        instance.report_runless_asset_event(
            AssetObservation(asset_key=NODE_USAGE_KEY, metadata=lifetime.to_metadata(),
                             description=f"node {lifetime.node_id} of pool {lifetime.pool} removed")
        )
        return True
