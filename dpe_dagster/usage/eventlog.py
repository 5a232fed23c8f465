"""Reading the ledger back from Dagster's event log, where it is kept (written by `writes.py`):
the observations of a key page by page, the node lifetimes, each run's latest usage record, the
containers' pod records.

Every reader of the ledger reads through these, so the keys' pages are read one way."""

from __future__ import annotations

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from dpe_dagster.usage.records import NODE_USAGE_KEY, POD_USAGE_KEY, RUN_USAGE_KEY, NodeLifetime, UsageRecord

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


def read_node_lifetimes(instance: DagsterInstance, since: float | None = None) -> list[NodeLifetime]:
    return [NodeLifetime.from_metadata(r.asset_observation.metadata)
            for r in observations(instance, NODE_USAGE_KEY, since)]


def latest_run_usage(instance: DagsterInstance, since: float | None) -> dict[str, tuple[int, UsageRecord]]:
    """Each run's latest usage record with its storage id, in the order they were written."""
    latest: dict[str, tuple[int, UsageRecord]] = {}
    for r in observations(instance, RUN_USAGE_KEY, since):
        record = UsageRecord.from_metadata(r.asset_observation.metadata)
        latest.pop(record.run_id, None)  # keeps the order of the latest writes
        latest[record.run_id] = (r.storage_id, record)
    return latest


def read_run_usage(instance: DagsterInstance, since: float | None = None) -> list[UsageRecord]:
    """One record per run: its latest (an amendment replaces the record it amends)."""
    return [record for _, record in latest_run_usage(instance, since).values()]


def read_pod_usage(instance: DagsterInstance, since: float | None = None) -> list[UsageRecord]:
    """The records of the containers' pods (`pods.py`)."""
    return [UsageRecord.from_metadata(r.asset_observation.metadata)
            for r in observations(instance, POD_USAGE_KEY, since)]


def read_usage(instance: DagsterInstance, since: float | None = None) -> list[UsageRecord]:
    """Everything charged: runs, and the containers (pods) that assets ran on pools."""
    return read_run_usage(instance, since) + read_pod_usage(instance, since)
