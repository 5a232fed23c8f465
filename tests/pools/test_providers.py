"""Providers come from entry points: a cloud of one's own is installed, not written into dpe."""

from __future__ import annotations

import textwrap

import pytest

from dpe_dagster.config import ConfigError, parse_environment
from dpe_dagster.pools import look_ahead, open_pool
from dpe_dagster.pools.base import Node
from dpe_dagster.providers import ENTRY_POINT_GROUP, providers
from dpe_dagster.usage.pricing import CONFIG, pricer_for

THIRD_CLOUD = '''
from dpe_dagster.pools.base import PENDING, Node, PoolCapabilities, Price
from dpe_dagster.providers import Provider

LOOKED_AHEAD = []


class ThirdPool(PoolCapabilities):
    def __init__(self, config):
        self.name, self.config, self._target = config.name, config, 0

    def target(self):
        return self._target

    def set_target(self, size):
        self._target = size

    def nodes(self):
        return [Node(f"third-{i}", PENDING, "spot", "t1.small", "zone-a", 0.0) for i in range(self._target)]

    def remove_nodes(self, node_ids, stuck=()):
        self._target -= len(node_ids)

    def run_nodes(self):
        return {}


class ThirdProvider(Provider):
    name = "third"

    def open(self, pool, env):
        return ThirdPool(pool)

    def look_ahead(self, pools):
        LOOKED_AHEAD.append([p.name for p in pools])

    def pricer(self, env):
        return lambda pool, node: Price(0.5, "third-price-list")

    def node_id(self, provider_id):
        return (provider_id or "").removeprefix("third://") or None


PROVIDER = ThirdProvider()
'''


@pytest.fixture
def third_cloud(tmp_path, monkeypatch):
    """A package `third_cloud` installed the way pip installs one: a dist-info with its entry point."""
    (tmp_path / "third_cloud.py").write_text(THIRD_CLOUD)
    info = tmp_path / "third_cloud-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: third-cloud\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""
        [{ENTRY_POINT_GROUP}]
        third = third_cloud:PROVIDER
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    providers.cache_clear()
    yield
    providers.cache_clear()


def environment():
    return parse_environment("mixed", {"pools": {
        "etl": {"provider": "third", "max_size": 4, "node_cpus": 2, "node_memory_gb": 4, "price_per_node_hour": 0.1},
        "local-etl": {"provider": "local", "max_size": 1, "node_cpus": 2, "node_memory_gb": 2,
                      "price_per_node_hour": 0.02},
    }})


def test_a_registered_provider_is_configured_opened_looked_ahead_and_prices_its_nodes(third_cloud):
    import third_cloud as module

    assert {"local", "aws_asg", "third"} <= set(providers())
    env = environment()
    pool = open_pool(env.pool("etl"), env)
    pool.set_target(2)
    assert [n.id for n in pool.nodes()] == ["third-0", "third-1"]
    look_ahead([pool, open_pool(env.pool("local-etl"), env)])
    assert module.LOOKED_AHEAD == [["etl"]], "each provider sees only its own pools"
    price = pricer_for(env)
    node = Node("third-0", "running", "spot", "t1.small", "zone-a", 0.0)
    assert (price(env.pool("etl"), node).usd_per_hour, price(env.pool("etl"), node).source) == (0.5, "third-price-list")
    assert price(env.pool("local-etl"), node).source == CONFIG
    assert providers()["third"].node_id("third://n-7") == "n-7"


def test_an_unknown_provider_names_the_field_and_the_installed_ones():
    with pytest.raises(ConfigError, match=r"pools\.etl\.provider: must be one of aws_asg, local; got 'third'"):
        environment()
