"""A container's room on a pool: asked for through its run, so the control plane sizes the pool.

A container's pod is not a run, so its ask is recorded on the run whose step starts it (a
`dpe/container/<id>` tag, `container_ask_tag`) for as long as the pod waits or runs; the demand
every controller reads (`read_demand`) counts it on its pool, and the ask is closed (the tag
emptied) when the container ends.

Who then asks the provider:
- the autoscaler sensor, on its next tick (`ask_provider=False`, staging and prod): the run pod
  calls no cloud API and needs no cloud credentials;
- or this process, at once (`ask_provider=True`, e.g. against a cloud's emulator), with the same
  `request_capacity` the launchers use, under the same pool lock. Placement then follows the
  launchers' rules (`dpe_dagster.launch.pool_choice`): a pool that is backed off, or whose API
  fails, passes the container to its fallback pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dagster import DagsterInstance

from dpe_dagster.config import Environment
from dpe_dagster.containers.request import ContainerRequest
from dpe_dagster.config import PoolConfig
from dpe_dagster.launch.pool_choice import ask_along_chain, fallback_chain
from dpe_dagster.scaling.policy import Plan
from dpe_dagster.tags import CONTAINER_TAG_PREFIX, container_ask_tag


class NoCapacity(RuntimeError):
    """No pool of the container's fallback chain can be asked for room now."""


@dataclass(frozen=True)
class Placed:
    pool: str
    plan: Plan | None = None  # None: asked through the run, the autoscaler sizes the pool

    @property
    def cannot_grow(self) -> str | None:
        """Why the pool will not reach the size the demand wants, or None."""
        if self.plan is not None and (self.plan.wanted > self.plan.target or "capped" in self.plan.reason):
            return self.plan.reason
        return None

    def why_no_node(self) -> str:
        if self.plan is None:
            return (f"the container's ask is on its run and the autoscaler sizes pool {self.pool} for it; see the "
                    "dpe_autoscaler sensor's log for the pool's plan")
        return self.cannot_grow or f"{self.plan.reason}; the node did not come"


def record_ask(instance: DagsterInstance, run_id: str, demand_id: str, pool: str, request: ContainerRequest) -> None:
    instance.add_run_tags(run_id, container_ask_tag(demand_id, pool, request.cpus, request.memory_gb))


def close_ask(instance: DagsterInstance, run_id: str, demand_id: str) -> None:
    """The container ended (or never started): its room is no longer asked for."""
    instance.add_run_tags(run_id, {CONTAINER_TAG_PREFIX + demand_id: ""})


def ask_pool_for_container(instance: DagsterInstance, env: Environment, request: ContainerRequest, run_id: str,
                           demand_id: str, log: Callable[[str], None], *, ask_provider: bool) -> Placed:
    """Record the container's ask on its run and, with `ask_provider`, ask its pool (or its
    fallback) for room now; raise NoCapacity, naming every pool and why, when none can be asked."""
    if not ask_provider:
        record_ask(instance, run_id, demand_id, request.pool, request)
        log(f"dpe: container asks pool {request.pool} for {request.cpus:g} CPUs and {request.memory_gb:g} GB; "
            "the autoscaler sizes the pool for it")
        return Placed(request.pool)
    def too_small(config: PoolConfig) -> str | None:
        if request.cpus > config.room_cpus or request.memory_gb > config.room_memory_gb:
            return (f"its nodes ({config.room_cpus:g} CPUs, {config.room_memory_gb:g} GB for runs) are smaller than "
                    "the container")
        return None

    chain = fallback_chain(env, request.pool)
    asked = ask_along_chain(instance, env, chain, "container", log, skip=too_small,
                              before_asking=lambda name: record_ask(instance, run_id, demand_id, name, request))
    if asked.pool is None:
        close_ask(instance, run_id, demand_id)
        raise NoCapacity(f"no pool of {', '.join(chain)} can take this container now: " + "; ".join(asked.reasons))
    if asked.pool != request.pool:
        log(f"dpe: container placed on fallback pool {asked.pool} (asked for {request.pool})")
    return Placed(asked.pool, asked.plan)
