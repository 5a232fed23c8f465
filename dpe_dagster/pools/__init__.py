"""Node pools: the protocol and its providers."""

from __future__ import annotations

import sys
from typing import Iterable

from dpe_dagster.config import Environment, PoolConfig
from dpe_dagster.pools.base import Node, NodePool, PoolError


def open_pool(pool: PoolConfig, env: Environment) -> NodePool:
    """The provider object behind a configured pool. Cloud SDKs are imported only here, lazily."""
    if pool.provider == "local":
        from dpe_dagster.pools.local.standalone import LocalSparkPool

        return LocalSparkPool.from_config(pool)
    if pool.provider == "aws_asg":
        from dpe_dagster.pools.aws.asg import AwsAsgPool

        return AwsAsgPool.from_config(pool, env)
    raise PoolError(f"pools.{pool.name}.provider: no provider {pool.provider!r}")


def look_ahead(pools: Iterable[NodePool]) -> None:
    """Before a tick looks at every pool: let providers that can describe many pools in one call
    do so (aws_asg: one DescribeAutoScalingGroups per 100 groups instead of one or two per pool)."""
    aws_asg = sys.modules.get("dpe_dagster.pools.aws.asg")  # not imported: no aws_asg pool exists
    if aws_asg is None:
        return
    groups = [pool for pool in pools if isinstance(pool, aws_asg.AwsAsgPool)]
    if groups:
        aws_asg.describe_groups(groups)


__all__ = ["Node", "NodePool", "PoolError", "look_ahead", "open_pool"]
