"""Nodes alive now, as partial lifetimes, so that reports count what the ledger has no lifetime for
yet: a pool's min-size nodes, a node still up when the report is made. Nothing is written here; a
node's lifetime is recorded once, when it is removed."""

from __future__ import annotations

from typing import Callable, Mapping

from dagster import DagsterInstance

from dpe_dagster.config import Environment, PoolConfig
from dpe_dagster.pools import Node, PoolError, open_pool
from dpe_dagster.usage.eventlog import read_node_lifetimes
from dpe_dagster.usage.pricing import Price, pricer_for
from dpe_dagster.usage.records import NodeLifetime


# What the autoscaler has counted so far of each live node's busy time: pool -> node id -> seconds
# (`dpe_dagster.scaling.cursor.read_busy_seconds` reads it from the autoscaler's cursor; the ledger
# is told how to read it rather than importing the autoscaler).
BusySoFar = Callable[[DagsterInstance], Mapping[str, Mapping[str, float]]]


def live_lifetimes(env: Environment, now: float, pricer: Callable[[PoolConfig, Node], Price] | None = None,
                   busy_so_far: Mapping[str, Mapping[str, float]] | None = None
                   ) -> tuple[list[NodeLifetime], dict[str, str]]:
    """Each node the pools list now, as a lifetime up to `now` (busy seconds as the autoscaler has
    counted them, when it has), and the error of each pool whose provider could not say."""
    pricer = pricer or pricer_for(env)
    out: list[NodeLifetime] = []
    failed: dict[str, str] = {}
    for name, config in env.pools.items():
        try:
            nodes = open_pool(config, env).nodes()
            prices = [pricer(config, node) for node in nodes]
        except PoolError as error:
            failed[name] = str(error)
            continue
        counted = (busy_so_far or {}).get(name, {})
        for node, price in zip(nodes, prices):
            removed_at = max(now, node.launched_at)
            busy = min(counted.get(node.id, 0.0), removed_at - node.launched_at)
            out.append(NodeLifetime(
                node_id=node.id, pool=name, lifecycle=node.lifecycle, instance_type=node.instance_type,
                launched_at=node.launched_at, removed_at=removed_at, busy_seconds=busy,
                price_per_node_hour=price.usd_per_hour, price_source=price.source,
            ))
    return out, failed


def report_nodes(instance: DagsterInstance, env: Environment, now: float, busy_so_far: BusySoFar,
                 pricer: Callable[[PoolConfig, Node], Price] | None = None
                 ) -> tuple[list[NodeLifetime], dict[str, str]]:
    """The ledger's node lifetimes plus the nodes alive now (see `live_lifetimes`), and the pools
    whose live nodes could not be read. The pools are asked first: a node removed meanwhile is then
    in the ledger, and is counted once, from there."""
    live, failed = live_lifetimes(env, now, pricer, busy_so_far(instance))
    recorded = read_node_lifetimes(instance)
    known = {(n.node_id, n.launched_at) for n in recorded}
    return recorded + [n for n in live if (n.node_id, n.launched_at) not in known], failed
