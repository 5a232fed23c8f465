"""The books of a control step: what it consults and writes besides the pool itself (locks, node
prices, the usage ledger, budgets). `Books` is what the step asks of them; `DagsterBooks` keeps
them in a Dagster instance, and the simulator keeps its own in memory (sim/dpe.py)."""

from __future__ import annotations

import time
from typing import Any, Callable, ContextManager, Protocol

from dagster import DagsterInstance

from dpe_dagster.config import PoolConfig
from dpe_dagster.lock import pool_lock
from dpe_dagster.pools.base import Node
from dpe_dagster.usage.attribution import NodeSpan
from dpe_dagster.usage.budget import check_budget
from dpe_dagster.usage.charges import charged_busy_seconds
from dpe_dagster.usage.pricing import Price, node_price
from dpe_dagster.usage.records import NodeLifetime
from dpe_dagster.usage.writes import record_node_lifetime


class Books(Protocol):
    """What a control step consults and writes besides the pool. In production that is the
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

    def busy_seconds(self, config: PoolConfig, node: NodeSpan, alive: Callable[[], list[NodeSpan]],
                     observed: float) -> float:
        """What a leaving node's lifetime records as busy; `observed`: what the loop saw busy;
        `alive()`: the pool's nodes not in the ledger yet, ending when `node` does (built when called)."""

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

    def busy_seconds(self, config: PoolConfig, node: NodeSpan, alive: Callable[[], list[NodeSpan]],
                     observed: float) -> float:
        # The node-seconds its runs were charged, not what ticks saw: a run is charged from its
        # start (steps before Spark included) to its end, and ticks see busy only while Spark
        # holds cores, between ticks. One figure, so a node is never less busy than its runs.
        return charged_busy_seconds(self.instance, config, node, alive())

    def scale_up_blocked(self, config: PoolConfig, nodes: list[Node], now: float) -> str | None:
        return check_budget(self.instance, config, nodes, self.price, now)

    def clock(self) -> float:
        return time.time()
