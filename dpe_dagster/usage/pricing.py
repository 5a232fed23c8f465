"""What a node costs per hour, and where that figure comes from.

The pool's provider prices its nodes when it can (`Provider.pricer`: a
cloud's spot price history and on-demand table); otherwise, or when it has no figure, the price configured
on the pool applies. Every usage record names the source it used.
"""

from __future__ import annotations

from typing import Callable

from dpe_dagster.config import PoolConfig
from dpe_dagster.pools.base import Node, Price

CONFIG = "config"


def node_price(pool: PoolConfig, node: Node) -> Price:
    """The pool's configured price."""
    return Price(pool.price_per_node_hour, CONFIG)


def pricer_for(env) -> Callable[[PoolConfig, Node], Price]:
    """A node pricer for a configuration: each pool's provider's price, else the configured one."""
    from dpe_dagster.providers import provider

    by_provider = {name: provider(name).pricer(env) for name in {p.provider for p in env.pools.values()}}

    def price(pool: PoolConfig, node: Node) -> Price:
        priced = by_provider.get(pool.provider)
        return (priced(pool, node) if priced else None) or node_price(pool, node)

    return price


__all__ = ["CONFIG", "Price", "node_price", "pricer_for"]
