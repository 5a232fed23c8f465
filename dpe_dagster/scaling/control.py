"""The control loop's step: observe -> plan -> act, the imperative shell around the pure policy.

`control_step` is one pass for one pool. The sensor runs it each tick (`scale_pool`), the launcher
runs it scale-up-only when it launches a run (`request_capacity`), and the simulator runs it
against a simulated provider (sim/dpe.py). Every pass reads the pool's real state from its
provider first, so after a crash nothing depends on what the last process remembered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Protocol

from dagster import DagsterInstance

from dpe_dagster.config import Environment, PoolConfig
from dpe_dagster.pools import NodePool, look_ahead, open_pool
from dpe_dagster.pools.base import REMOVED_IDLE, REMOVED_VANISHED, Node
from dpe_dagster.scaling.activity import pool_activity
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.scaling.policy import Plan, PoolActivity, PoolState, RunDemand, plan_pool
from dpe_dagster.usage.attribution import NodeSpan
from dpe_dagster.usage.eventlog import record_node_lifetime
from dpe_dagster.usage.ledger import charged_busy_seconds
from dpe_dagster.lock import pool_lock
from dpe_dagster.usage.budget import alert_once, budget_block, hold_or_release, spent_today
from dpe_dagster.usage.pricing import Price, node_price, pricer_for
from dpe_dagster.usage.records import NodeLifetime


@dataclass
class NodeMemory:
    """What the control loop has seen of one node; lives in the sensor cursor, so it survives
    restarts. Losing it only delays a scale-down (idle time restarts from the next tick).

    It also keeps what the ledger needs to charge the node if it disappears without this loop
    removing it (a spot interruption, or a scale-down whose process died after terminating the
    instance and before writing its record): see `vanished`."""

    idle_since: float | None = None
    busy_seconds: float = 0.0
    last_seen: float | None = None
    launched_at: float | None = None
    lifecycle: str = "on-demand"
    instance_type: str = "unknown"
    zone: str = ""
    # Since when the provider cannot tell whether the node is busy (None: it can), and how long in
    # all it was kept while it could not: the ledger says why such a node was paid for.
    unknown_since: float | None = None
    unknown_seconds: float = 0.0
    not_ready_since: float | None = None  # since when the node is not running (None: it is)
    # Node.interrupted / interrupted_at as last seen: the instance's mark goes with it.
    interrupted: str = ""
    interrupted_at: float | None = None

    def to_json(self) -> list:
        return [self.idle_since, round(self.busy_seconds, 3), self.last_seen, self.launched_at, self.lifecycle,
                self.instance_type, self.zone, self.unknown_since, round(self.unknown_seconds, 3),
                self.not_ready_since, self.interrupted, self.interrupted_at]

    @classmethod
    def from_json(cls, raw: list) -> "NodeMemory":
        # Cursors from before have 3, 7 or 10 fields.
        mem = cls(raw[0], float(raw[1]), raw[2], *raw[3:7])
        if len(raw) >= 10:
            mem.unknown_since, mem.unknown_seconds, mem.not_ready_since = raw[7], float(raw[8]), raw[9]
        if len(raw) >= 12:
            mem.interrupted, mem.interrupted_at = raw[10], raw[11]
        return mem


def observe(nodes: list[Node], memory: dict[str, NodeMemory], now: float) -> dict[str, NodeMemory]:
    """Fold this tick's view of the nodes into what was seen before."""
    seen = {}
    for node in nodes:
        known = memory.get(node.id)
        mem = known or NodeMemory(last_seen=None)
        if not node.busy_known:
            if mem.unknown_since is None:
                mem.unknown_since = now
            elif mem.last_seen is not None:
                mem.unknown_seconds += max(0.0, now - mem.last_seen)
            mem.idle_since = None  # it may have worked meanwhile: idle time starts again once known
        elif node.busy:
            mem.unknown_since = None
            if mem.last_seen is not None:
                mem.busy_seconds += max(0.0, now - mem.last_seen)
            mem.idle_since = None
        else:
            mem.unknown_since = None
            if mem.idle_since is None:
                # Counted from the first tick that sees it idle: it may have been idle a little
                # longer, never shorter, so the idle timeout is never cut short.
                mem.idle_since = now
        if node.state == "running":
            mem.not_ready_since = None
        elif mem.not_ready_since is None:
            # A node first seen not ready has been so since its launch (never later than now: EC2
            # may not list a new instance's launch time yet); one seen ready before, since now.
            mem.not_ready_since = min(node.launched_at, now) if known is None else now
        mem.last_seen = now
        mem.launched_at, mem.lifecycle, mem.instance_type, mem.zone = (
            node.launched_at, node.lifecycle, node.instance_type, node.zone)
        if node.interrupted:
            mem.interrupted, mem.interrupted_at = node.interrupted, node.interrupted_at
        seen[node.id] = mem
    return seen


def vanished(books: "Books", config: PoolConfig, nodes: list[Node], memory: dict[str, NodeMemory]) -> list[NodeLifetime]:
    """Record the lifetime of every remembered node the provider no longer lists. The ledger writes
    each node once, so a node this or another controller already recorded is not doubled. It is
    charged up to the last tick that saw it (never more than it ran). If writing fails, the tick
    fails before the cursor is saved, and the next tick tries again."""
    listed = {node.id for node in nodes}
    gone = {node_id: (Node(id=node_id, state="gone", launched_at=mem.launched_at, busy=False, lifecycle=mem.lifecycle,
                           instance_type=mem.instance_type, zone=mem.zone), max(mem.last_seen, mem.launched_at))
            for node_id, mem in memory.items()
            if node_id not in listed and mem.launched_at is not None and mem.last_seen is not None}
    out = []
    for node_id, (node, removed_at) in gone.items():
        others = [*_spans(config, nodes, removed_at),
                  *(_span(config, other, min(end, removed_at)) for other, end in gone.values())]
        lifetime = _lifetime(books, config, node, removed_at, others, memory[node_id], REMOVED_VANISHED)
        if books.record_lifetime(lifetime):
            out.append(lifetime)
    return out


def _span(config: PoolConfig, node: Node, end: float) -> NodeSpan:
    return NodeSpan(node.id, config.name, 0.0, node.launched_at, end)  # busy needs no price


def _spans(config: PoolConfig, nodes: list[Node], end: float) -> list[NodeSpan]:
    return [_span(config, node, end) for node in nodes]


def _lifetime(books: "Books", config: PoolConfig, node: Node, removed_at: float, alive: list[NodeSpan],
              mem: NodeMemory, removed_because: str) -> NodeLifetime:
    """The record of a node leaving the pool; `alive`: the pool's nodes meanwhile, the ledger aside;
    `mem`: what the loop saw of it (busy, status unknown, EC2's warning)."""
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


class Books(Protocol):
    """What a control step consults and writes besides the pool itself. In production that is the
    Dagster instance (`DagsterBooks`: advisory or file locks, the usage ledger, budgets); in a
    replay it is the simulator's memory. Everything else about a step is the same code."""

    # Whether another controller may act on the pool between a look and an action: then a plan
    # that changes something is remade under the lock before it is applied.
    contended: bool

    def lock(self, pool: str) -> ContextManager[Any]:
        """Held while a plan is remade from fresh state and applied."""

    def price(self, config: PoolConfig, node: Node) -> Price:
        ...

    def record_lifetime(self, lifetime: NodeLifetime) -> bool:
        """Write a node's lifetime once; False if it was already written."""

    def busy_seconds(self, config: PoolConfig, node: NodeSpan, alive: list[NodeSpan], observed: float) -> float:
        """What a leaving node's lifetime records as busy; `observed`: what the loop saw busy."""

    def scale_up_blocked(self, config: PoolConfig, nodes: list[Node], now: float) -> str | None:
        """Why the pool may not grow now (its budget is spent), or None."""

    def clock(self) -> float:
        """Now (unix s): when a removal is recorded, after the provider has acted."""


class DagsterBooks:
    """The books of a Dagster instance: pool locks, the usage ledger and budgets."""

    contended = True  # sensors, launchers, the CLI and other daemons share the pool

    def __init__(self, instance: DagsterInstance, pricer: Callable[[PoolConfig, Node], Price] | None = None):
        self.instance = instance
        self.price = pricer or node_price

    def lock(self, pool: str) -> ContextManager[Any]:
        return pool_lock(self.instance, pool)

    def record_lifetime(self, lifetime: NodeLifetime) -> bool:
        return record_node_lifetime(self.instance, lifetime)

    def busy_seconds(self, config: PoolConfig, node: NodeSpan, alive: list[NodeSpan], observed: float) -> float:
        # The node-seconds its runs were charged, not what ticks saw: a run is charged from its
        # start (steps before Spark included) to its end, and ticks see busy only while Spark
        # holds cores, between ticks. One figure, so a node is never less busy than its runs.
        return charged_busy_seconds(self.instance, config, node, alive)

    def scale_up_blocked(self, config: PoolConfig, nodes: list[Node], now: float) -> str | None:
        return check_budget(self.instance, config, nodes, self.price, now)

    def clock(self) -> float:
        return time.time()


@dataclass
class PoolTick:
    pool: str
    plan: Plan
    state: PoolState
    demand: list[RunDemand]
    removed: list[NodeLifetime] = field(default_factory=list)
    # Nodes that disappeared without this loop removing them, recorded this tick.
    lost: list[NodeLifetime] = field(default_factory=list)


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
        idle_since: dict[str, float] = {}
        if sensing:
            lost.extend(vanished(books, config, nodes, memory))
            seen = observe(nodes, memory, now)
            memory.clear()
            memory.update(seen)
            idle_since = {node_id: m.idle_since for node_id, m in memory.items() if m.idle_since is not None}
        state = PoolState(target=pool.target(), nodes=tuple(nodes), idle_since=idle_since,
                          scale_up_blocked=books.scale_up_blocked(config, nodes, now), activity=activity,
                          unknown_since={i: m.unknown_since for i, m in memory.items() if m.unknown_since is not None},
                          not_ready_since={i: m.not_ready_since for i, m in memory.items()
                                           if m.not_ready_since is not None})
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
    for node_id in plan.remove:
        lifetime = _lifetime(books, config, by_id[node_id], removed_at, _spans(config, nodes, removed_at),
                             memory.pop(node_id), why[node_id])
        books.record_lifetime(lifetime)
        tick.removed.append(lifetime)


def check_budget(instance: DagsterInstance, config: PoolConfig, nodes: list[Node],
                 pricer: Callable[[PoolConfig, Node], Price], now: float) -> str | None:
    """The pool's budget block, if any; holds or releases its queued runs and alerts once a day."""
    if config.daily_budget_usd is None:
        return None
    spent = spent_today(instance, config, nodes, pricer, now)
    block = budget_block(config, spent)
    hold_or_release(instance, config, block)
    if block:
        alert_once(instance, config, spent, block, now)
    return block


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
