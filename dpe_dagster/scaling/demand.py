"""Demand: the runs in Dagster's run storage that wait for, or hold, room on a node pool."""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from dpe_dagster.config import Environment
from dpe_dagster.pools.base import NodePool
from dpe_dagster.scaling.history import RunDurations
from dpe_dagster.scaling.policy import RunDemand
from dpe_dagster.scaling.tags import POOL_TAG, TagError, pool_request

ACTIVE_STATUSES = [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


@dataclass
class Demand:
    by_pool: dict[str, list[RunDemand]] = field(default_factory=lambda: defaultdict(list))
    # Runs whose tags are invalid: they ask for nothing; the launcher fails them with the message.
    rejected: dict[str, str] = field(default_factory=dict)

    def of(self, pool: str) -> list[RunDemand]:
        return list(self.by_pool.get(pool, []))


def read_demand(instance: DagsterInstance, env: Environment, pools: Mapping[str, NodePool] | None = None,
                now: float | None = None) -> Demand:
    """Active runs tagged with a pool of this environment.

    With `pools` (provider objects by pool name, the caller's own), the demand also knows what
    the simulator's dpe knows: which node each run holds (`RunDemand.node_id`, from the pool's
    `run_nodes`, asked only of pools with active runs) and when it should end
    (`RunDemand.expected_end`, from past runs of its job: scaling/history.py, one indexed query per
    distinct job). Without, runs carry neither (the policy packs them from scratch).

    Only the status filter goes to run storage: it is indexed, so a read costs what the active
    runs cost, not the history. The pool tag is matched here, not in SQL: a tag filter makes the
    storage walk every run that ever carried the tag (finished ones included), and the read then
    grows with history (measured in bench/tick_cost.py: ~0.7 s at 50k runs on SQLite)."""
    demand = Demand()
    now = time.time() if now is None else now
    durations = RunDurations(instance) if pools is not None else None
    for record in instance.get_run_records(filters=RunsFilter(statuses=ACTIVE_STATUSES)):
        run = record.dagster_run
        if run.tags.get(POOL_TAG) not in env.pools:
            continue  # no pool, or another environment's: not ours to size (nor to reject)
        try:
            request = pool_request(run.tags, env)
        except TagError as error:
            demand.rejected[run.run_id] = str(error)
            continue
        if request is not None:
            ends = durations.expected_end(record, now) if durations is not None else None
            demand.by_pool[request.pool].append(RunDemand(run.run_id, request.cpus, request.memory_gb,
                                                          expected_end=ends))
    for name, pool in (pools or {}).items():
        if demand.by_pool.get(name):
            demand.by_pool[name] = on_nodes(demand.by_pool[name], pool.run_nodes())
    return demand


def on_nodes(runs: list[RunDemand], run_nodes: Mapping[str, str]) -> list[RunDemand]:
    """The runs, each with the node it holds (`run_nodes`: run id -> node id) when it holds one."""
    return [dataclasses.replace(run, node_id=run_nodes[run.run_id]) if run.run_id in run_nodes else run
            for run in runs]
