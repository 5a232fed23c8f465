"""The control loop's step: observe -> plan -> act, the imperative shell around the pure policy.

`control_step` is one pass for one pool. The sensor runs it each tick (`scale_pool`), the launcher
runs it scale-up-only when it launches a run (`request_capacity`), and the simulator runs it
against a simulated provider (sim/dpe.py). Every pass reads the pool's real state from its
provider first, so after a crash nothing depends on what the last process remembered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cache
from typing import Callable, Mapping

from dagster import DagsterInstance

from dpe_dagster.config import Environment, PoolConfig
from dpe_dagster.pools import NodePool, look_ahead, open_pool
from dpe_dagster.pools.base import REMOVED_IDLE, REMOVED_VANISHED, Node
from dpe_dagster.scaling.activity import pool_activity
from dpe_dagster.scaling.books import Books, DagsterBooks
from dpe_dagster.scaling.cursor import NodeMemory, observe
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.scaling.policy import Plan, PoolActivity, PoolState, RunDemand, plan_pool
from dpe_dagster.usage.attribution import NodeSpan
from dpe_dagster.usage.pricing import Price, pricer_for
from dpe_dagster.usage.records import NodeLifetime


def vanished(books: Books, config: PoolConfig, nodes: list[Node], memory: dict[str, NodeMemory],
             listed: Mapping[str, NodeMemory]) -> list[NodeLifetime]:
    """Record the lifetime of every remembered node the provider no longer lists (`listed`: this
    tick's memory of the nodes it lists, from `observe`). The ledger writes each node once, so a
    node this or another controller already recorded is not doubled. It is charged up to the last
    tick that saw it (never more than it ran). If writing fails, the tick fails before the cursor
    is saved, and the next tick tries again."""
    if memory.keys() <= listed.keys():  # (most ticks: every node remembered is still listed)
        return []
    gone = {node_id: (Node(id=node_id, state="gone", launched_at=mem.launched_at, busy=False, lifecycle=mem.lifecycle,
                           instance_type=mem.instance_type, zone=mem.zone), max(mem.last_seen, mem.launched_at))
            for node_id, mem in memory.items()
            if node_id not in listed and mem.launched_at is not None and mem.last_seen is not None}
    out = []
    for node_id, (node, removed_at) in gone.items():
        def alive(removed_at: float = removed_at) -> list[NodeSpan]:
            return [*_spans(config, nodes, removed_at),
                    *(_span(config, other, min(end, removed_at)) for other, end in gone.values())]
        lifetime = _lifetime(books, config, node, removed_at, alive, memory[node_id], REMOVED_VANISHED)
        if books.record_lifetime(lifetime):
            out.append(lifetime)
    return out


def _span(config: PoolConfig, node: Node, end: float) -> NodeSpan:
    return NodeSpan(node.id, config.name, 0.0, node.launched_at, end)  # busy needs no price


def _spans(config: PoolConfig, nodes: list[Node], end: float) -> list[NodeSpan]:
    return [_span(config, node, end) for node in nodes]


def _lifetime(books: Books, config: PoolConfig, node: Node, removed_at: float, alive: Callable[[], list[NodeSpan]],
              mem: NodeMemory, removed_because: str) -> NodeLifetime:
    """The record of a node leaving the pool, from what the loop saw of it (`mem`: busy, status
    unknown, the cloud's warning); `alive()`: the pool's nodes meanwhile, the ledger aside, built
    only if the books ask for them."""
    price = books.price(config, node)
    span = NodeSpan(node.id, config.name, price.usd_per_hour, node.launched_at, removed_at)
    unknown_until_removed = (max(0.0, removed_at - mem.last_seen)
                             if mem.unknown_since is not None and mem.last_seen is not None else 0.0)
    return NodeLifetime(
        node_id=node.id, pool=config.name, lifecycle=node.lifecycle, instance_type=node.instance_type,
        launched_at=node.launched_at, removed_at=removed_at,
        busy_seconds=books.busy_seconds(config, span, alive, mem.busy_seconds),
        price_per_node_hour=price.usd_per_hour, price_source=price.source,
        removed_because=removed_because, unknown_seconds=mem.unknown_seconds + unknown_until_removed,
        interrupted=mem.interrupted, interrupted_at=mem.interrupted_at,
    )


@dataclass
class PoolTick:
    pool: str
    plan: Plan
    state: PoolState
    demand: list[RunDemand]
    removed: list[NodeLifetime] = field(default_factory=list)
    # Nodes that disappeared without this loop removing them, recorded this tick.
    lost: list[NodeLifetime] = field(default_factory=list)


def pool_state(target: int, nodes: list[Node], memory: dict[str, NodeMemory], scale_up_blocked: str | None,
               activity: PoolActivity | None) -> PoolState:
    """The pool as a pass gives it to the policy: the provider's target and nodes, with when the
    loop first saw each node idle, its busy status unknown, or not ready (`memory`; empty for the
    launcher's pass, which keeps none)."""
    idle_since, unknown_since, not_ready_since = {}, {}, {}
    for node_id, mem in memory.items():
        if mem.idle_since is not None:
            idle_since[node_id] = mem.idle_since
        if mem.unknown_since is not None:
            unknown_since[node_id] = mem.unknown_since
        if mem.not_ready_since is not None:
            not_ready_since[node_id] = mem.not_ready_since
    return PoolState(target=target, nodes=tuple(nodes), idle_since=idle_since, activity=activity,
                     scale_up_blocked=scale_up_blocked, unknown_since=unknown_since, not_ready_since=not_ready_since)


def control_step(
    books: Books,
    config: PoolConfig,
    pool: NodePool,
    demand: list[RunDemand],
    memory: dict[str, NodeMemory] | None,
    now: float,
    *,
    fresh_demand: Callable[[], list[RunDemand]] | None = None,
    activity: PoolActivity | None = None,
) -> tuple[PoolTick, dict[str, NodeMemory]]:
    """One pass of the control loop for one pool: observe -> plan -> act. The autoscaler sensor,
    the run launcher and the simulator all run this function; only `books`, `pool` and where the
    demand comes from differ.

    `memory` is what earlier passes saw of each node (the sensor's cursor). With it the pass is
    the sensor's: idle nodes past their timeout are removed and vanished nodes are charged. With
    None it is the launcher's: scale up only, from the pool's state alone.

    A plan that changes something is made again under the pool's lock, from the provider's state
    and the demand read afresh (`fresh_demand`), and applied while the lock is held: two
    controllers (two daemons, a sensor and a launcher) can never act on the same stale view, e.g.
    remove a node a just-launched run was given. `activity`: the pool's recent arrivals (see
    scaling/activity.py), for the `auto` idle timeout and the queueing allowance."""
    sensing = memory is not None
    memory = dict(memory or {})
    lost: list[NodeLifetime] = []

    def look(demand: list[RunDemand]) -> tuple[PoolState, Plan, list[Node]]:
        nodes = pool.nodes()
        if sensing:
            seen = observe(nodes, memory, now)  # (a node no longer listed keeps what was seen of it)
            lost.extend(vanished(books, config, nodes, memory, seen))
            memory.clear()
            memory.update(seen)
        state = pool_state(pool.target(), nodes, memory, books.scale_up_blocked(config, nodes, now), activity)
        plan = plan_pool(config, state, demand, now)
        if not sensing and (plan.remove or plan.target < state.target):  # the launcher never scales down
            # (but it asks for the replacements of nodes that go whatever the demand)
            up = min(plan.target + len(plan.remove), config.max_size) if _replaces(plan) else state.target
            plan = Plan(max(state.target, up), (), plan.wanted, plan.reason, plan.idle_timeout_s)
        return state, plan, nodes

    state, plan, nodes = look(demand)
    if not plan.changes(state):
        return PoolTick(config.name, plan, state, demand, lost=lost), memory
    with books.lock(config.name):
        if books.contended:
            if fresh_demand is not None:
                demand = fresh_demand()
            state, plan, nodes = look(demand)
        tick = PoolTick(config.name, plan, state, demand, lost=lost)
        if plan.remove:
            # Withdraw what has no node yet, first; or, for nodes that go whatever the demand (stuck,
            # interrupted), ask for their replacements before they go (as far as max_size allows),
            # then for what max_size held back. Idle removal alone never raises the target.
            replacing = _replaces(plan)
            first = plan.target + len(plan.remove)
            first = min(first, config.max_size) if replacing and first > state.target else min(first, state.target)
            if first != state.target:
                pool.set_target(first)
            _remove(books, config, pool, plan, nodes, memory, now, tick)
            if replacing and plan.target > first - len(plan.remove):
                pool.set_target(plan.target)
        elif plan.target != state.target:  # up, or down by withdrawing capacity not launched yet
            pool.set_target(plan.target)
    return tick, memory


def scale_pool(
    instance: DagsterInstance,
    config: PoolConfig,
    pool: NodePool,
    demand: list[RunDemand],
    memory: dict[str, NodeMemory],
    now: float,
    pricer: Callable[[PoolConfig, Node], Price] | None = None,
    fresh_demand: Callable[[], list[RunDemand]] | None = None,
    activity: PoolActivity | None = None,
) -> tuple[PoolTick, dict[str, NodeMemory]]:
    """The sensor's pass over one pool, on a Dagster instance's books (see `control_step`)."""
    return control_step(DagsterBooks(instance, pricer), config, pool, demand, memory, now,
                        fresh_demand=fresh_demand, activity=activity)


def _replaces(plan: Plan) -> bool:
    """Whether the plan removes nodes that go whatever the demand (stuck, interrupted): those are
    replaced if still wanted, where an idle node's removal only shrinks the pool."""
    return any(plan.removed_because.get(node_id, REMOVED_IDLE) != REMOVED_IDLE for node_id in plan.remove)


def _remove(books: Books, config: PoolConfig, pool: NodePool, plan: Plan,
            nodes: list[Node], memory: dict[str, NodeMemory], now: float, tick: PoolTick) -> None:
    by_id = {node.id: node for node in nodes}
    why = {node_id: plan.removed_because.get(node_id, REMOVED_IDLE) for node_id in plan.remove}
    stuck = [node_id for node_id in plan.remove if why[node_id] != REMOVED_IDLE]
    if stuck:
        pool.remove_nodes(plan.remove, stuck=stuck)
    else:  # as every provider takes it
        pool.remove_nodes(plan.remove)
    removed_at = books.clock()  # after the provider acted: removing takes time
    alive = cache(lambda: _spans(config, nodes, removed_at))  # the same for every node removed here
    for node_id in plan.remove:
        lifetime = _lifetime(books, config, by_id[node_id], removed_at, alive, memory.pop(node_id), why[node_id])
        books.record_lifetime(lifetime)
        tick.removed.append(lifetime)


def request_capacity(
    instance: DagsterInstance, env: Environment, pool_name: str, log: Callable[[str], None] = lambda _: None
) -> Plan:
    """Scale a pool up for the demand it has right now (never down): the launcher calls this the
    moment it launches a run, so scale-up does not wait for the sensor's next tick."""
    config = env.pool(pool_name)
    pool = open_pool(config, env)
    look_ahead([pool])  # one look: the provider reads the pool once for the steps below

    def demand() -> list[RunDemand]:
        return read_demand(instance, env, {pool_name: pool}, time.time()).of(pool_name)

    now = time.time()
    tick, _ = control_step(DagsterBooks(instance, pricer_for(env)), config, pool, demand(), None, now,
                           fresh_demand=demand, activity=pool_activity(config, None, now))
    # Also when the pool has already grown (when the run was queued, or for other runs).
    log(f"dpe: pool {pool_name}: {tick.plan.reason}")
    return tick.plan
