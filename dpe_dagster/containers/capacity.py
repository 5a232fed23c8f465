"""Asking a pool for room for one container, with the control code the sensor and launchers use.

The control code reads demand from run storage only, and a container's pod is not a run. So for
this one call the pod is shown to it as one more active run of its pool (`_WithPodDemand`); the
plan is then made by the same `request_capacity`, under the same pool lock, from the same
provider state. The sensor's later ticks do not see the pod, and need not: the policy shrinks a
pool only by removing nodes idle for the idle timeout, and a node running the pod is busy.

Placement follows the launchers' rules (`dpe_dagster.launch.placement`): a pool that is backed
off, or whose API fails, passes the container to its fallback pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.storage.dagster_run import DagsterRun

from dpe_dagster.config import Environment
from dpe_dagster.containers.request import ContainerRequest
from dpe_dagster.launch.placement import _back_off, fallback_chain, pool_unavailable
from dpe_dagster.pools import open_pool
from dpe_dagster.pools.base import PoolError
from dpe_dagster.scaling.control import request_capacity
from dpe_dagster.scaling.policy import Plan
from dpe_dagster.scaling.tags import pool_tags

POD_DEMAND_JOB = "__dpe_container__"


class NoCapacity(RuntimeError):
    """No pool of the container's fallback chain can be asked for room now."""


class _WithPodDemand:
    """The instance as the control code reads it, plus the pod as one more started run of `pool`."""

    def __init__(self, instance: DagsterInstance, demand_id: str, pool: str, cpus: float, memory_gb: float):
        self._instance = instance
        self._pod = DagsterRun(job_name=POD_DEMAND_JOB, run_id=demand_id, status=DagsterRunStatus.STARTED,
                               tags=pool_tags(pool, cpus=cpus, memory=f"{round(memory_gb * 1024)}m"))

    def get_runs(self, filters: Any = None, *args: Any, **kwargs: Any) -> list[DagsterRun]:
        runs = list(self._instance.get_runs(filters, *args, **kwargs))
        statuses = getattr(filters, "statuses", None) or []
        if DagsterRunStatus.STARTED in statuses:
            runs.append(self._pod)
        return runs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._instance, name)


@dataclass(frozen=True)
class Placed:
    pool: str
    plan: Plan

    @property
    def cannot_grow(self) -> str | None:
        """Why the pool will not reach the size the demand wants, or None."""
        if self.plan.wanted > self.plan.target or "capped" in self.plan.reason:
            return self.plan.reason
        return None


def ask_pool_for_container(instance: DagsterInstance, env: Environment, request: ContainerRequest, demand_id: str,
                           log: Callable[[str], None]) -> Placed:
    """Ask the container's pool (or its fallback) for room now; raise NoCapacity, naming every
    pool and why, when none can be asked."""
    reasons = []
    for name in fallback_chain(env, request.pool):
        config = env.pool(name)
        if request.cpus > config.node_cpus or request.memory_gb > config.node_memory_gb:
            reasons.append(f"{name}: its nodes ({config.node_cpus:g} CPUs, {config.node_memory_gb:g} GB) are "
                           f"smaller than the container")
            continue
        pool = open_pool(config, env)
        try:
            reason = pool_unavailable(pool)
        except PoolError as error:
            reason = str(error)
        if reason is None:
            view = _WithPodDemand(instance, demand_id, name, request.cpus, request.memory_gb)
            try:
                plan = request_capacity(view, env, name, log)  # type: ignore[arg-type]
                if name != request.pool:
                    log(f"dpe: container placed on fallback pool {name} (asked for {request.pool})")
                return Placed(name, plan)
            except PoolError as error:
                reason = f"asking for capacity failed: {error}"
                _back_off(pool, reason)
        log(f"dpe: pool {name} cannot take this container now: {reason}")
        reasons.append(f"{name}: {reason}")
    raise NoCapacity(f"no pool of {', '.join(fallback_chain(env, request.pool))} can take this container now: "
                     + "; ".join(reasons))
