"""What a node costs per hour, and where that figure comes from.

The chain, per node: for a spot node on AWS, the EC2 spot price history for the instance type and
zone the node really ran in, at its launch; for an on-demand node on AWS, the dated on-demand table
kept in this folder; otherwise (or when those have no figure) the price configured on the pool.
Every usage record names the source it used.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from dpe_dagster.config import PoolConfig
from dpe_dagster.pools.base import Node

CONFIG = "config"
SPOT_HISTORY = "aws-spot-price-history"
ON_DEMAND_TABLE = "aws-on-demand-table"
TABLE = Path(__file__).with_name("aws_on_demand_prices.csv")


@dataclass(frozen=True)
class Price:
    usd_per_hour: float
    source: str


@lru_cache(maxsize=1)
def on_demand_table() -> dict[tuple[str, str], tuple[float, str]]:
    lines = [line for line in TABLE.read_text().splitlines() if line and not line.startswith("#")]
    return {(row["instance_type"], row["region"]): (float(row["usd_per_hour"]), row["as_of"])
            for row in csv.DictReader(lines)}


def on_demand_price(instance_type: str, region: str) -> Price | None:
    found = on_demand_table().get((instance_type, region))
    return Price(found[0], f"{ON_DEMAND_TABLE}:{found[1]}") if found else None


# AWS answers with the price in effect at StartTime, which can be older than the window; a point
# older than this is no price at all (an emulator's placeholder, dated 2006, for one).
MAX_PRICE_AGE = timedelta(days=90)


class SpotPriceHistory:
    """EC2 `DescribeSpotPriceHistory`, cached per instance type, zone and hour."""

    def __init__(self, ec2: Any):
        self.ec2 = ec2
        self._cache: dict[tuple[str, str, int], float | None] = {}

    def price(self, instance_type: str, zone: str, at: float) -> float | None:
        hour = int(at // 3600)
        key = (instance_type, zone, hour)
        if key not in self._cache:
            when = datetime.fromtimestamp(at, timezone.utc)
            response = self.ec2.describe_spot_price_history(
                InstanceTypes=[instance_type], AvailabilityZone=zone, ProductDescriptions=["Linux/UNIX"],
                StartTime=when - timedelta(hours=1), EndTime=when, MaxResults=10,
            )
            points = sorted((p for p in response.get("SpotPriceHistory", [])
                             if when - MAX_PRICE_AGE <= _utc(p["Timestamp"]) <= when + timedelta(minutes=5)
                             and float(p["SpotPrice"]) > 0), key=lambda p: _utc(p["Timestamp"]))
            self._cache[key] = float(points[-1]["SpotPrice"]) if points else None
        return self._cache[key]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def node_price(pool: PoolConfig, node: Node, region: str | None = None,
               spot: SpotPriceHistory | None = None) -> Price:
    """The price of one node, by the chain above. Lookups that fail fall through to the next link."""
    if pool.provider == "aws_asg" and region:
        if node.lifecycle == "spot" and spot is not None:
            try:
                value = spot.price(node.instance_type, node.zone, node.launched_at)
            except Exception:  # noqa: BLE001 - an API error must not lose the record; the next link prices it
                value = None
            if value is not None:
                return Price(value, SPOT_HISTORY)
        elif node.lifecycle == "on-demand":
            table = on_demand_price(node.instance_type, region)
            if table is not None:
                return table
    return Price(pool.price_per_node_hour, CONFIG)


def pricer_for(env) -> Callable[[PoolConfig, Node], Price]:
    """A node pricer for an environment: AWS lookups only where the environment has AWS pools."""
    if not any(p.provider == "aws_asg" for p in env.pools.values()):
        return lambda pool, node: node_price(pool, node)
    from dpe_dagster.pools.aws.asg import AwsSettings, make_clients

    aws = AwsSettings.parse(env.aws)
    spot = SpotPriceHistory(make_clients(aws)[1])
    return lambda pool, node: node_price(pool, node, aws.region, spot)
