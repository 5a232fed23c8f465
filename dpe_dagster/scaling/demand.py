"""Demand: the runs in Dagster's run storage that wait for, or hold, room on a node pool."""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from dagster import DagsterInstance, DagsterRun, RunsFilter

from dpe_dagster.config import Environment
from dpe_dagster.pools.base import NodePool, PoolError
from dpe_dagster.runs import ACTIVE_STATUSES
from dpe_dagster.scaling.history import expected_ends
from dpe_dagster.scaling.admission import startable
from dpe_dagster.scaling.policy import RunDemand
from dpe_dagster.spark.kubernetes import executor_pod_size, max_executors
from dpe_dagster.tags import POOL_TAG, PoolRequest, TagError, container_asks, pool_request



@dataclass(frozen=True)
class RunPods:
    """What one run puts on which pool: its own pod, and its Spark executors when the run pod is
    a driver on the environment's driver pool."""

    run_pod: PoolRequest
    executors: tuple[PoolRequest, ...] = ()

    def pods(self) -> list[PoolRequest]:
        return [self.run_pod, *self.executors]


def run_pods(request: PoolRequest, env: Environment) -> RunPods:
    """Where a run asking `request` lands. Without a driver pool, its pod goes to the tagged pool
    with the run's request. With one, the run pod (a Spark driver in client mode) goes to the
    driver pool with that pool's default requests, and the tagged pool holds the executors its
    session may start (`executor_pods`). The launcher builds the run's pod from this, the
    autoscaler sizes every pool from it."""
    if env.driver_pool is None:
        return RunPods(request)
    driver = env.pool(env.driver_pool)
    return RunPods(PoolRequest(driver.name, driver.default_run_cpus, driver.default_run_memory_gb,
                               request.wait_target_s),
                   tuple(executor_pods(request, env.spark.conf_for(request.pool))))


def executor_pods(request: PoolRequest, conf: Mapping[str, str]) -> list[PoolRequest]:
    """The executor pods a run's session may hold on the run's pool: as many as its request fills
    (`max_executors`, the bound the Spark resource sets), each of Spark's pod size
    (`executor_pod_size`). Without an executor size in the settings, one pod of the run's request."""
    size = executor_pod_size(conf)
    if size is None:
        return [request]
    return [PoolRequest(request.pool, *size, request.wait_target_s)] * max_executors(request.cpus, dict(conf))


@dataclass
class Demand:
    by_pool: dict[str, list[RunDemand]] = field(default_factory=lambda: defaultdict(list))
    # Runs whose tags are invalid: they ask for nothing; the launcher fails them with the message.
    rejected: dict[str, str] = field(default_factory=dict)
    # Pools whose provider failed while asked which node each run holds (PoolError message).
    failed: dict[str, str] = field(default_factory=dict)

    def of(self, pool: str) -> list[RunDemand]:
        return list(self.by_pool.get(pool, []))


def read_demand(instance: DagsterInstance, env: Environment, pools: Mapping[str, NodePool] | None = None,
                now: float | None = None) -> Demand:
    """Active runs tagged with a pool of this environment, on each pool what lands there
    (`run_pods`: with a driver pool, one driver per run there and its executors on the tagged pool),
    plus the containers runs have asked room for (`container_asks`).

    With `pools` (provider objects by pool name, the caller's own), the demand also knows what
    the simulator's dpe knows: which node each run holds (`RunDemand.node_id`, from the pool's
    `run_nodes`, asked only of pools with active runs) and when it should end
    (`RunDemand.expected_end`, and how long it takes, `expected_s`, from past runs of its job:
    scaling/history.py, one indexed query per distinct job, and one by run id for start times).
    Without, runs carry none of these (the policy packs them from scratch).

    Only the status filter goes to run storage: it is indexed, so a read costs what the active
    runs cost, not the history. The pool tag is matched here, not in SQL: a tag filter makes the
    storage walk every run that ever carried the tag (finished ones included), and the read then
    grows with history (bench/RESULTS.md, "2. Tick cost at scale")."""
    demand = Demand()
    runs = instance.get_runs(filters=RunsFilter(statuses=ACTIVE_STATUSES))
    runs = startable(instance, runs)  # a run the run queue holds back would idle its node
    for run in runs:
        try:  # a container's pod, asked for from its run (any run, on any pool of ours)
            for container, ask in container_asks(run.tags, env).items():
                demand.by_pool[ask.pool].append(RunDemand(f"{run.run_id}/{container}", ask.cpus, ask.memory_gb))
        except TagError as error:
            demand.rejected[run.run_id] = str(error)
        if run.tags.get(POOL_TAG) not in env.pools:
            continue  # no pool, or another environment's: not ours to size (nor to reject)
        try:
            request = pool_request(run.tags, env)
        except TagError as error:
            demand.rejected[run.run_id] = str(error)
            continue
        if request is not None:
            for pod in run_pods(request, env).pods():
                demand.by_pool[pod.pool].append(RunDemand(run.run_id, pod.cpus, pod.memory_gb,
                                                          wait_target_s=pod.wait_target_s))
    if pools is not None:
        add_nodes_and_expected_ends(demand, runs, pools, instance, time.time() if now is None else now)
        add_stranded_pods(demand, env, pools)
    return demand


def add_stranded_pods(demand: Demand, env: Environment, pools: Mapping[str, NodePool]) -> None:
    """Each pod a pool's scheduler found no room for asks for a node of its own: the whole room of
    one (the policy ignores it while a node is on its way). The safety net, as Cluster Autoscaler
    scales up for unschedulable pods, for when dpe's model of a node's room is wrong."""
    for name, pool in pools.items():
        stranded = getattr(pool, "stranded_pods", None)
        config = env.pools.get(name)
        if stranded is None or config is None:
            continue
        for pod, _, _ in stranded():
            demand.by_pool[name].append(RunDemand(f"pod:{pod}", config.room_cpus, config.room_memory_gb,
                                                  stranded=True))


def add_nodes_and_expected_ends(demand: Demand, runs: Sequence[DagsterRun], pools: Mapping[str, NodePool],
                                instance: DagsterInstance, now: float) -> None:
    """Give each run of the demand its expected end and the node it holds (see `read_demand`)."""
    asking = {run.run_id for pool_runs in demand.by_pool.values() for run in pool_runs}
    ends = expected_ends(instance, [run for run in runs if run.run_id in asking], now)
    for name, pool_runs in demand.by_pool.items():
        try:
            nodes = pools[name].run_nodes() if name in pools and pool_runs else {}
        except PoolError as error:  # one pool's failure does not hide the other pools' demand
            demand.failed[name], nodes = str(error), {}
        # A provider knows one node per run: a run's first pod on the pool holds it, its other
        # executors count as waiting (more demand, never less).
        placed: set[str] = set()
        with_nodes = []
        for run in pool_runs:
            node_id = None if run.run_id in placed else nodes.get(run.run_id)
            placed.add(run.run_id)
            end, duration = ends.get(run.run_id, (None, None))
            with_nodes.append(dataclasses.replace(run, node_id=node_id, expected_end=end, expected_s=duration))
        demand.by_pool[name] = with_nodes
