"""Node pools: the protocol (`base.py`), one package per provider (the registry
is `dpe_dagster/providers.py`) and opening a configured pool."""

from __future__ import annotations

from typing import Iterable

from dpe_dagster.config import Environment, PoolConfig
from dpe_dagster.pools.base import Node, NodePool, PoolError
from dpe_dagster.providers import provider


def open_pool(pool: PoolConfig, env: Environment) -> NodePool:
    """The provider's object behind a configured pool. Cloud SDKs are imported only there, lazily."""
    return provider(pool.provider, f"pools.{pool.name}.provider").open(pool, env)


def look_ahead(pools: Iterable[NodePool]) -> None:
    """Before a tick looks at every pool: let each provider read its pools at once if it can
    (one call for many of its pools instead of one or two per pool)."""
    by_provider: dict[str, list[NodePool]] = {}
    for pool in pools:
        by_provider.setdefault(pool.config.provider, []).append(pool)
    for name, members in by_provider.items():
        provider(name).look_ahead(members)


__all__ = ["Node", "NodePool", "PoolError", "look_ahead", "open_pool"]
