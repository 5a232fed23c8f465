"""What an AWS node costs: for a spot node, the EC2 spot price history for the instance type and zone
the node really ran in, at its launch; for an on-demand node, the dated on-demand table kept in this
folder (`on_demand_prices.csv`). When neither has a figure, the pool's configured price applies
(`dpe_dagster.usage.pricing`)."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from dpe_dagster.config import PoolConfig
from dpe_dagster.pools.base import Node, Price

SPOT_HISTORY = "aws-spot-price-history"
ON_DEMAND_TABLE = "aws-on-demand-table"
TABLE = Path(__file__).with_name("on_demand_prices.csv")


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


def aws_node_price(node: Node, region: str, spot: SpotPriceHistory | None = None) -> Price | None:
    """The price of one AWS node by the chain above; None when no lookup has a figure."""
    if node.lifecycle == "spot" and spot is not None:
        try:
            value = spot.price(node.instance_type, node.zone, node.launched_at)
        except Exception:  # noqa: BLE001 - an API error must not lose the record; the configured price applies
            value = None
        if value is not None:
            return Price(value, SPOT_HISTORY)
    elif node.lifecycle == "on-demand":
        return on_demand_price(node.instance_type, region)
    return None


def aws_pricer(env) -> Callable[[PoolConfig, Node], Price | None]:
    from dpe_dagster.pools.aws.asg import AwsSettings, make_clients

    aws = AwsSettings.parse(dict(env.block("aws")))
    spot = SpotPriceHistory(make_clients(aws)[1])
    return lambda pool, node: aws_node_price(node, aws.region, spot)
