"""Demand: the runs in Dagster's run storage that wait for, or hold, room on a node pool."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from dpe_dagster.config import Environment
from dpe_dagster.scaling.admission import startable
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


def read_demand(instance: DagsterInstance, env: Environment) -> Demand:
    """Active runs tagged with a pool of this environment.

    Only the status filter goes to run storage: it is indexed, so a read costs what the active
    runs cost, not the history. The pool tag is matched here, not in SQL: a tag filter makes the
    storage walk every run that ever carried the tag (finished ones included), and the read then
    grows with history (measured in bench/tick_cost.py: ~0.7 s at 50k runs on SQLite)."""
    demand = Demand()
    runs = instance.get_runs(filters=RunsFilter(statuses=ACTIVE_STATUSES))
    runs = startable(instance, runs)  # a run the run queue holds back would idle its node
    for run in runs:
        if run.tags.get(POOL_TAG) not in env.pools:
            continue  # no pool, or another environment's: not ours to size (nor to reject)
        try:
            request = pool_request(run.tags, env)
        except TagError as error:
            demand.rejected[run.run_id] = str(error)
            continue
        if request is not None:
            demand.by_pool[request.pool].append(RunDemand(run.run_id, request.cpus, request.memory_gb))
    return demand
