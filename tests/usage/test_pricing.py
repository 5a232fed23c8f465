"""The pricing chain: spot price history for the node's real type and zone, the dated on-demand
table, the configured price; and every figure says where it came from."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from dpe_dagster.config import parse_pool
from dpe_dagster.pools.aws.emulator import MotoServer
from dpe_dagster.pools.aws.pricing import SPOT_HISTORY, SpotPriceHistory, aws_node_price, on_demand_price
from dpe_dagster.pools.base import Node
from dpe_dagster.usage.pricing import CONFIG
from dpe_dagster.usage.pricing import node_price as configured_price


def node_price(pool, node, region=None, spot=None):
    """As a pricer prices it: the provider's figure (AWS, in `region`), else the configured price."""
    return (aws_node_price(node, region, spot) if region else None) or configured_price(pool, node)

SPOT = parse_pool("spot-etl", {"provider": "aws_asg", "max_size": 3, "node_cpus": 2, "node_memory_gb": 8,
                               "lifecycle": "spot", "price_per_node_hour": 0.035, "settings": {"group_name": "spot"}})
ON_DEMAND = parse_pool("ondemand-etl", {"provider": "aws_asg", "max_size": 3, "node_cpus": 2, "node_memory_gb": 8,
                                        "lifecycle": "on-demand", "price_per_node_hour": 0.5,
                                        "settings": {"group_name": "ondemand"}})
NOW = time.time()


def node(lifecycle: str, instance_type: str = "m6i.large") -> Node:
    return Node("i-0123", "running", NOW - 600, False, lifecycle, instance_type, "us-east-1a")


class RecordedEc2:
    """Serves a DescribeSpotPriceHistory answer in the format AWS documents, on loopback."""

    def __init__(self, price: str, timestamp: datetime):
        body = f"""<?xml version="1.0" encoding="UTF-8"?>
<DescribeSpotPriceHistoryResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>59dbff89-35bd-4eac-99ed-be587EXAMPLE</requestId>
  <spotPriceHistorySet>
    <item>
      <instanceType>m6i.large</instanceType>
      <productDescription>Linux/UNIX</productDescription>
      <spotPrice>{price}</spotPrice>
      <timestamp>{timestamp.strftime('%Y-%m-%dT%H:%M:%S.000Z')}</timestamp>
      <availabilityZone>us-east-1a</availabilityZone>
    </item>
  </spotPriceHistorySet>
  <nextToken/>
</DescribeSpotPriceHistoryResponse>""".encode()
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                outer.requests.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
                self.send_response(200)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def test_spot_nodes_are_priced_from_the_spot_price_history_of_their_type_and_zone(credentials):
    recorded = RecordedEc2("0.038100", datetime.now(timezone.utc) - timedelta(hours=3))
    try:
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=recorded.url)
        price = node_price(SPOT, node("spot"), "us-east-1", SpotPriceHistory(ec2))
        assert (price.usd_per_hour, price.source) == (0.0381, SPOT_HISTORY)
        assert "InstanceType.1=m6i.large" in recorded.requests[0] and "AvailabilityZone=us-east-1a" in recorded.requests[0]
        node_price(SPOT, node("spot"), "us-east-1", spot := SpotPriceHistory(ec2))
        node_price(SPOT, node("spot"), "us-east-1", spot)
        assert len(recorded.requests) == 2, "one lookup per type, zone and hour"
    finally:
        recorded.close()


def test_a_stale_or_placeholder_spot_price_falls_back_to_the_configured_price(credentials):
    # moto answers every spot price query with a placeholder dated 2006: dpe must not bill by it.
    with MotoServer() as moto:
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.url)
        price = node_price(SPOT, node("spot"), "us-east-1", SpotPriceHistory(ec2))
    assert (price.usd_per_hour, price.source) == (0.035, CONFIG)


def test_on_demand_nodes_use_the_dated_table_and_unknown_types_the_config():
    price = node_price(ON_DEMAND, node("on-demand", "m6i.large"), "us-east-1")
    assert price.usd_per_hour == 0.096 and price.source == "aws-on-demand-table:2025-06-01"
    assert node_price(ON_DEMAND, node("on-demand", "x9.huge"), "us-east-1").source == CONFIG
    assert on_demand_price("m6i.large", "eu-north-1") is None
    local = parse_pool("spot-etl", {"provider": "local", "max_size": 2, "node_cpus": 1, "node_memory_gb": 1,
                                    "price_per_node_hour": 0.0175})
    assert node_price(local, node("spot")).source == CONFIG
