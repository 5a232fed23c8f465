"""A container's pod in the ledger: charged like a run, attributed to the asset that ran it.

A pod started by `PoolContainers` holds room on its pool from the moment it is on a node until it
ends. Its record is a `UsageRecord` (so reports treat it like a run's) whose `run_id` is
`<dagster run id>/<pod name>`, with the asset that ran it as its only asset. It is charged by the
same attribution as runs (`attribution.attribute`): its share of the pool's nodes by its requests,
over the nodes alive while it ran (removed ones from the ledger, live ones from the provider),
alongside the runs on that pool at the time.

The record is an observation of `dpe/pod_usage`, written into the run's own event log once (by
the ledger's write-once rule, `writes.write_once`). It is a key of its own so that
the run's record (`dpe/run_usage`) and its per-asset parts are still written once by the ledger
sensor when the run ends.

A run that cannot read its pool's nodes (a run pod in staging/prod holds no cloud credentials)
writes the unpriced span instead (`dpe/pod_span`); the ledger sensor prices it when the run ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, MutableMapping

from dagster import AssetKey, AssetObservation, DagsterEventType, DagsterInstance

from dpe_dagster.config import Environment
from dpe_dagster.pools.base import Node
from dpe_dagster.usage.attribution import RunSpan, attribute
from dpe_dagster.usage.pricing import CONFIG
from dpe_dagster.usage.records import POD_USAGE_KEY, UNASSIGNED, UsageRecord, from_metadata, to_metadata
from dpe_dagster.usage.spans import Pricer, node_share, node_spans, run_span, runs_overlapping
from dpe_dagster.usage.writes import observation_event, write_once

POD_SPAN_KEY = AssetKey(["dpe", "pod_span"])  # a pod span waiting for the control plane to price it
NO_NODE = "none: ran as a local process, on no pool node"


@dataclass(frozen=True)
class PodSpan:
    """What a container's pod held: where, how much, from when to when, for which asset."""

    run_id: str  # the Dagster run whose step ran it
    job_name: str
    pod: str  # the pod's name (a local process: its own id)
    asset: str  # the asset key (user string) that ran it
    pool: str
    cpus: float
    memory_gb: float
    started_at: float  # on a node (k8s) / process started (local)
    ended_at: float
    status: str  # SUCCESS or FAILURE
    team: str = UNASSIGNED

    @property
    def record_id(self) -> str:
        return f"{self.run_id}/{self.pod}"


def usage_for_pod(instance: DagsterInstance, env: Environment, span: PodSpan, live: Iterable[Node] | None,
                  pricer: Pricer | None) -> UsageRecord:
    """The pod's charge. `live=None`: it ran on no pool node (the local variant), so it is
    recorded with its requests and times but charged nothing."""
    pool = env.pool(span.pool)
    share = node_share(span.cpus, span.memory_gb, pool)
    node_seconds = cost = 0.0
    source = NO_NODE
    if live is not None and pricer is not None:
        ours = RunSpan(span.record_id, span.pool, share, span.started_at, span.ended_at)
        runs = [s for r in runs_overlapping(instance, span.pool, span.started_at)
                if (s := run_span(r, env, span.ended_at))]
        nodes = node_spans(instance, env, span.pool, span.started_at, span.ended_at, live, pricer)
        charges, _ = attribute([*runs, ours], [n for n, _ in nodes], since=span.started_at, until=span.ended_at)
        if span.record_id in charges:
            node_seconds, cost = charges[span.record_id].node_seconds, charges[span.record_id].cost
        source = "+".join(sorted({s for n, s in nodes if n.start < span.ended_at and n.end > span.started_at})) \
            or CONFIG
    return UsageRecord(
        run_id=span.record_id,
        job_name=span.job_name,
        pool=span.pool,
        team=span.team,
        status=span.status,
        cpus=span.cpus,
        memory_gb=span.memory_gb,
        node_share=share,
        node_seconds=node_seconds,
        price_per_node_hour=cost / node_seconds * 3600 if node_seconds else pool.price_per_node_hour,
        price_source=source,
        cost_usd=cost,
        started_at=span.started_at,
        ended_at=span.ended_at,
        lifecycle=pool.lifecycle,
        assets=(span.asset,),
        asset_costs={span.asset: {"cost_usd": cost, "node_seconds": node_seconds, "team": span.team}},
    )


def _runobservations(instance: DagsterInstance, run_id: str, key: AssetKey):
    for r in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_OBSERVATION, limit=100_000).records:
        event = r.event_log_entry.dagster_event
        if event is not None and event.event_specific_data.asset_observation.asset_key == key:
            yield event.event_specific_data.asset_observation


def _recorded(instance: DagsterInstance, run_id: str, record_id: str) -> bool:
    return any(getattr(o.metadata.get("run_id"), "value", None) == record_id
               for o in _runobservations(instance, run_id, POD_USAGE_KEY))


def record_pod_usage(instance: DagsterInstance, env: Environment, span: PodSpan, live: Iterable[Node] | None,
                     pricer: Pricer | None) -> UsageRecord | None:
    """Write the pod's record into its run's event log once; None if it was already there."""

    def unwritten() -> bool:
        return not _recorded(instance, span.run_id, span.record_id)

    def write(_: bool) -> UsageRecord:
        usage = usage_for_pod(instance, env, span, live, pricer)
        observation = AssetObservation(asset_key=POD_USAGE_KEY, metadata=usage.to_metadata(),
                                       description=f"pod {span.pod} of asset {span.asset} on pool {span.pool}")
        instance.report_dagster_event(observation_event(span.job_name, observation), run_id=span.run_id)
        return usage

    return write_once(instance, unwritten, write)


def record_pod_span(instance: DagsterInstance, span: PodSpan) -> None:
    """Write the unpriced span into its run's event log, for the ledger sensor to price."""
    observation = AssetObservation(asset_key=POD_SPAN_KEY, metadata=to_metadata(span),
                                   description=f"pod {span.pod} of asset {span.asset} on pool {span.pool}, "
                                               "priced by the ledger sensor when the run ends")
    instance.report_dagster_event(observation_event(span.job_name, observation), run_id=span.run_id)


def price_pending_pods(instance: DagsterInstance, env: Environment, run_id: str,
                       live: MutableMapping[str, list[Node]], pricer: Pricer,
                       open_nodes: Callable[[str], list[Node]]) -> list[UsageRecord]:
    """Price the run's pending pod spans not recorded yet; `live` holds the pools' live nodes read
    so far, and a span on another pool reads its nodes with `open_nodes` (a PoolError fails the
    run's pool; whatever was written stays written once)."""
    written = []
    for observation in _runobservations(instance, run_id, POD_SPAN_KEY):
        span = from_metadata(PodSpan, observation.metadata)
        if _recorded(instance, run_id, span.record_id):
            continue
        if span.pool not in live:
            live[span.pool] = open_nodes(span.pool)
        usage = record_pod_usage(instance, env, span, live[span.pool], pricer)
        if usage is not None:
            written.append(usage)
    return written

