"""Reports count the nodes that are alive now (a pool's min-size nodes, a node still up), which the
ledger has no lifetime for yet (real instance, AWS Auto Scaling groups in a moto server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from dagster import materialize

from dpe_dagster.pools import open_pool
from dpe_dagster.scaling.cursor import read_busy_seconds
from dpe_dagster.usage.checks import PAID_CHECK
from dpe_dagster.usage.eventlog import read_node_lifetimes
from dpe_dagster.usage.writes import record_node_lifetime
from dpe_dagster.usage.live import report_nodes
from dpe_dagster.usage.platform_report import build_platform_usage
from dpe_dagster.usage.pricing import pricer_for
from dpe_dagster.usage.records import NodeLifetime


def report_of(env, instance):
    result = materialize([build_platform_usage(env, read_busy_seconds)], instance=instance)
    metadata = result.asset_materializations_for_node("dpe__platform_usage")[0].metadata
    (check,) = result.get_asset_check_evaluations()
    return metadata, check


def test_min_size_nodes_are_paid_and_idle_in_the_report_and_the_cli(aws_sim, tmp_path):
    env, instance, _ = aws_sim(min_size=1)
    alive = {name: open_pool(config, env).nodes() for name, config in env.pools.items()}
    assert all(len(nodes) == 1 for nodes in alive.values()), alive
    before = time.time()
    metadata, check = report_of(env, instance)
    after = time.time()

    assert read_node_lifetimes(instance) == [], "a report writes no lifetime: that is written at removal"
    pricer = pricer_for(env)
    rows = {r["pool"]: r for r in metadata["pool_days"].value}
    assert set(rows) == set(env.pools)
    for name, (node,) in alive.items():
        price = pricer(env.pools[name], node).usd_per_hour
        row = rows[name]
        assert row["day"] == datetime.fromtimestamp(after, timezone.utc).date().isoformat()
        # Up to the report's end: no runs, so all of it stood idle.
        assert (before - node.launched_at) * price / 3600 - 1e-9 <= row["paid_usd"] \
            <= (after - node.launched_at) * price / 3600 + 1e-9
        assert row["paid_usd"] > 0 and row["attributed_usd"] == 0
        assert row["idle_usd"] == pytest.approx(row["paid_usd"], abs=1e-9)
    # the asset page shows the total to a millionth of a dollar
    assert metadata["paid_usd"].value == pytest.approx(sum(r["paid_usd"] for r in rows.values()), abs=5e-7)
    assert metadata["idle_usd"].value == pytest.approx(metadata["paid_usd"].value, abs=1e-9)
    assert metadata["live_nodes_unread"].value == {}
    assert check.check_name == PAID_CHECK and check.passed, check.description

    cli = subprocess.run([str(Path(sys.executable).parent / "dpe"), "usage", "--by", "pool", "--json"],
                         capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert cli.returncode == 0, cli.stderr
    by_pool = {r["pool"]: r for r in json.loads(cli.stdout)}
    assert set(by_pool) == set(env.pools)
    for name, row in by_pool.items():
        assert row["paid_usd"] >= rows[name]["paid_usd"] and row["idle_usd"] == pytest.approx(row["paid_usd"])


def test_a_node_both_alive_and_in_the_ledger_is_counted_once(aws_sim):
    """A node removed between asking the pool and reading the ledger is in both: counted once."""
    env, instance, _ = aws_sim(min_size=1)
    config = env.pools["spot-etl"]
    (node,) = open_pool(config, env).nodes()
    price = pricer_for(env)(config, node)
    record_node_lifetime(instance, NodeLifetime(node.id, config.name, node.lifecycle, node.instance_type,
                                                node.launched_at, node.launched_at + 3600, 0.0, price.usd_per_hour))
    nodes, unread = report_nodes(instance, env, time.time(), read_busy_seconds)
    assert unread == {}
    assert [n.removed_at for n in nodes if n.node_id == node.id] == [node.launched_at + 3600]
    assert sorted(n.pool for n in nodes) == sorted(env.pools)


def test_a_pool_whose_nodes_cannot_be_read_is_named_and_the_others_are_counted(aws_sim):
    env, instance, autoscaling = aws_sim(min_size=1)
    bad = env.pools["ondemand-etl"]
    autoscaling.delete_auto_scaling_group(AutoScalingGroupName=bad.settings["group_name"], ForceDelete=True)
    metadata, check = report_of(env, instance)
    assert set(metadata["live_nodes_unread"].value) == {bad.name}
    assert "does not exist" in metadata["live_nodes_unread"].value[bad.name]
    assert {r["pool"] for r in metadata["pool_days"].value} == {"spot-etl"}
    assert metadata["paid_usd"].value > 0 and check.passed
