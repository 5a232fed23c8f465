"""Who pays for which node-second: attribution in the spirit of OpenCost, as a pure function.

Time on a pool is cut into segments at every run start/end and node launch/removal. In each
segment the pool pays for the nodes alive; the runs active then are charged their share of a node
(by their CPU/memory requests) at the segment's average node price. When runs ask for more than the
nodes alive (while nodes boot), they split the nodes alive in proportion to their shares, so no
run is charged for a node that did not exist. What no run is charged is the pool's idle cost. By
construction, for any window: paid = attributed + idle.

Runs are charged on the pool, not pinned to a node: in each segment a run's charge lies evenly on
the nodes alive. A node's busy seconds are what runs were charged on it that way (`node_busy`), so
for every node busy = the sum of its runs' charges on it, and paid = attributed + idle node by
node as well as pool by pool (a run asking half a node makes a node half busy).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class RunSpan:
    run_id: str
    pool: str
    share: float  # nodes of the pool's shape that the run's requests occupy
    start: float
    end: float


@dataclass(frozen=True)
class NodeSpan:
    node_id: str
    pool: str
    price_per_hour: float
    start: float
    end: float


@dataclass
class Charge:
    node_seconds: float = 0.0
    cost: float = 0.0


@dataclass
class PoolCost:
    paid: float = 0.0
    attributed: float = 0.0
    idle: float = 0.0
    node_seconds: float = 0.0  # paid node-seconds
    idle_node_seconds: float = 0.0
    node_busy: dict[NodeSpan, float] = field(default_factory=dict)  # node-seconds charged on each node


def attribute(runs: Iterable[RunSpan], nodes: Iterable[NodeSpan], since: float = float("-inf"),
              until: float = float("inf")) -> tuple[dict[str, Charge], dict[str, PoolCost]]:
    """Charges per run and costs per pool within [since, until)."""
    runs_by_pool: dict[str, list[RunSpan]] = defaultdict(list)
    nodes_by_pool: dict[str, list[NodeSpan]] = defaultdict(list)
    for run in runs:
        if run.end > run.start and run.share > 0:
            runs_by_pool[run.pool].append(run)
    for node in nodes:
        if node.end > node.start:
            nodes_by_pool[node.pool].append(node)
    charges: dict[str, Charge] = defaultdict(Charge)
    pools: dict[str, PoolCost] = {}
    for pool in set(runs_by_pool) | set(nodes_by_pool):
        pools[pool] = _attribute_pool(runs_by_pool[pool], nodes_by_pool[pool], since, until, charges)
    return dict(charges), pools


def _attribute_pool(runs: list[RunSpan], nodes: list[NodeSpan], since: float, until: float,
                    charges: dict[str, Charge]) -> PoolCost:
    cost = PoolCost()
    edges = sorted({t for s in (*runs, *nodes) for t in (s.start, s.end) if since <= t <= until}
                   | ({since} if since > float("-inf") else set()) | ({until} if until < float("inf") else set()))
    # Sweep: events sorted by time; keep the active sets up to date between edges.
    events = sorted([(n.start, 0, "node+", n) for n in nodes] + [(n.end, 0, "node-", n) for n in nodes]
                    + [(r.start, 1, "run+", r) for r in runs] + [(r.end, 1, "run-", r) for r in runs],
                    key=lambda e: (e[0], e[1]))
    alive: dict[str, NodeSpan] = {}
    active: dict[str, RunSpan] = {}
    i = 0
    for a, b in zip(edges, edges[1:]):
        while i < len(events) and events[i][0] <= a:
            _, _, kind, span = events[i]
            if kind == "node+":
                alive[span.node_id] = span
            elif kind == "node-":
                alive.pop(span.node_id, None)
            elif kind == "run+":
                active[span.run_id] = span
            else:
                active.pop(span.run_id, None)
            i += 1
        seconds = b - a
        if seconds <= 0 or not alive:
            continue
        n = len(alive)
        paid = sum(node.price_per_hour for node in alive.values()) * seconds / 3600.0
        demand = sum(run.share for run in active.values())
        used = min(demand, n)
        factor = used / demand if demand else 0.0
        for run in active.values():
            charge = charges[run.run_id]
            charge.node_seconds += run.share * factor * seconds
            charge.cost += paid * run.share * factor / n
        cost.paid += paid
        cost.attributed += paid * used / n
        cost.idle += paid * (n - used) / n
        cost.node_seconds += n * seconds
        cost.idle_node_seconds += (n - used) * seconds
        for node in alive.values():
            cost.node_busy[node] = cost.node_busy.get(node, 0.0) + used / n * seconds
    return cost


def node_busy_seconds(runs: Iterable[RunSpan], nodes: Iterable[NodeSpan], node: NodeSpan) -> float:
    """The node-seconds runs were charged on `node` over its life, among the pool's `nodes`
    alive meanwhile (`node` among them or not)."""
    others = [n for n in nodes if (n.node_id, n.start) != (node.node_id, node.start)]
    _, pools = attribute(runs, [*others, node], since=node.start, until=node.end)
    return pools[node.pool].node_busy.get(node, 0.0) if node.pool in pools else 0.0
