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


def live_lifetimes(env: Environment, now: float, pricer: Callable[[PoolConfig, Node], Price] | None = None,
                   memory: Mapping[str, Mapping] | None = None) -> tuple[list[NodeLifetime], dict[str, str]]:
    """Each node the pools list now, as a lifetime up to `now` (busy seconds from the autoscaler's
    memory of it, when it has one), and the error of each pool whose provider could not say."""
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
        seen = (memory or {}).get(name, {})
        for node, price in zip(nodes, prices):
            removed_at = max(now, node.launched_at)
            mem = seen.get(node.id)
            busy = min(mem.busy_seconds, removed_at - node.launched_at) if mem is not None else 0.0
            out.append(NodeLifetime(
                node_id=node.id, pool=name, lifecycle=node.lifecycle, instance_type=node.instance_type,
                launched_at=node.launched_at, removed_at=removed_at, busy_seconds=busy,
                price_per_node_hour=price.usd_per_hour, price_source=price.source,
            ))
    return out, failed


def report_nodes(instance: DagsterInstance, env: Environment, now: float,
                 pricer: Callable[[PoolConfig, Node], Price] | None = None
                 ) -> tuple[list[NodeLifetime], dict[str, str]]:
    """The ledger's node lifetimes plus the nodes alive now (see `live_lifetimes`), and the pools
    whose live nodes could not be read. The pools are asked first: a node removed meanwhile is then
    in the ledger, and is counted once, from there."""
    from dpe_dagster.scaling.cursor import read_node_memory

    live, failed = live_lifetimes(env, now, pricer, read_node_memory(instance))
    recorded = read_node_lifetimes(instance)
    known = {(n.node_id, n.launched_at) for n in recorded}
    return recorded + [n for n in live if (n.node_id, n.launched_at) not in known], failed
