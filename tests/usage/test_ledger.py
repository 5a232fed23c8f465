"""The usage ledger: one record per ended run, under repeated and replayed sensor ticks, on
SQLite and PostgreSQL, read back only through Dagster's event log."""

from __future__ import annotations

import math
import time

import pytest
from dagster import DagsterEventType, asset, build_sensor_context, materialize
from dagster._core.test_utils import create_run_for_test

from dpe_dagster.config import parse_environment
from dpe_dagster.tags import pool_tags
from dpe_dagster.usage.eventlog import read_node_lifetimes, read_run_usage
from dpe_dagster.usage.writes import record_node_lifetime
from dpe_dagster.usage.records import ASSET_COST, ASSET_NODE_SECONDS, RUN_USAGE_KEY, NodeLifetime
from dpe_dagster.usage.sensor import build_ledger_sensor

ENV = parse_environment("local", {"pools": {"spot-etl": {
    "provider": "local", "max_size": 4, "node_cpus": 2, "node_memory_gb": 8, "price_per_node_hour": 0.36,
    "default_run_cpus": 1, "default_run_memory_gb": 2,
}}})


@asset
def orders():
    return 1


@asset
def revenue(orders):
    return orders + 1


@asset
def broken():
    raise RuntimeError("boom")


def tick(instance, cursor):
    context = build_sensor_context(instance=instance, cursor=cursor)
    build_ledger_sensor(ENV)(context)
    return context.cursor


def make_runs(instance):
    """Five runs, then the two nodes that were alive the whole time, as the autoscaler records them."""
    t0 = time.time()
    ok = materialize([orders, revenue], instance=instance, tags=pool_tags("spot-etl", cpus=1))
    big = materialize([orders], instance=instance, tags=pool_tags("spot-etl", cpus=3))
    failed = materialize([broken], instance=instance, tags=pool_tags("spot-etl"), raise_on_error=False)
    untagged = materialize([orders], instance=instance)
    canceled = create_run_for_test(instance, job_name="canceled_before_start", tags=pool_tags("spot-etl"))
    instance.report_run_canceled(canceled)
    for i in (1, 2):
        record_node_lifetime(instance, NodeLifetime(f"node-{i}", "spot-etl", "on-demand", "local", t0 - 10,
                                                    time.time() + 10, busy_seconds=5, price_per_node_hour=0.36))
    return ok.run_id, big.run_id, failed.run_id, untagged.run_id, canceled.run_id


def test_every_ended_run_gets_exactly_one_record(instance):
    ok, big, failed, untagged, canceled = make_runs(instance)
    cursor = None
    for _ in range(3):  # repeated ticks
        cursor = tick(instance, cursor)
    tick(instance, None)  # a tick replayed from scratch, as after a crash before the cursor was saved
    tick(instance, None)

    records = read_run_usage(instance)
    by_run = {r.run_id: r for r in records}
    assert len(records) == len(by_run) == 4, "one record per pool-tagged run, none doubled"
    assert untagged not in by_run
    assert {by_run[r].status for r in (ok, big, failed, canceled)} == {"SUCCESS", "FAILURE", "CANCELED"}

    for run_id in (ok, big, failed):
        record = by_run[run_id]
        run = instance.get_run_record_by_id(run_id)
        assert record.pool == "spot-etl" and record.lifecycle == "on-demand"
        assert record.started_at == pytest.approx(run.start_time) and record.ended_at == pytest.approx(run.end_time)
        assert record.node_seconds > 0 and record.cost_usd > 0
        assert math.isclose(record.cost_usd, record.node_seconds / 3600 * 0.36, rel_tol=1e-9)
        assert math.isclose(record.node_seconds, (run.end_time - run.start_time) * record.node_share, rel_tol=1e-9)
    # 1 CPU of a 2-CPU node is half a node; 3 CPUs take two whole nodes.
    assert by_run[ok].node_share == 0.5 and by_run[big].node_share == 2.0
    # A run canceled while queued used nothing, and says so.
    assert by_run[canceled].node_seconds == 0 and by_run[canceled].cost_usd == 0
    assert {by_run[r].price_source for r in (ok, big, failed)} == {"config"}


def test_a_node_lifetime_is_recorded_once(instance):
    lifetime = NodeLifetime("node-1", "spot-etl", "spot", "m6i.large", 100.0, 460.0, busy_seconds=300,
                            price_per_node_hour=0.04, price_source="aws-spot-price-history")
    assert record_node_lifetime(instance, lifetime) is True
    assert record_node_lifetime(instance, lifetime) is False
    (stored,) = read_node_lifetimes(instance)
    assert stored == lifetime
    assert (stored.lifetime_seconds, stored.idle_seconds) == (360.0, 60.0)
    assert stored.cost_usd == pytest.approx(0.004)


def test_cost_is_attributed_to_the_run_assets_once(instance):
    ok, *_ = make_runs(instance)
    for cursor in (None, None, None):
        tick(instance, cursor)
    record = next(r for r in read_run_usage(instance) if r.run_id == ok)
    assert record.assets == ("orders", "revenue")
    events = instance.get_records_for_run(ok, of_type=DagsterEventType.ASSET_OBSERVATION).records
    per_asset = [e.event_log_entry.dagster_event.event_specific_data.asset_observation for e in events]
    attributions = [o for o in per_asset if ASSET_COST in o.metadata]
    assert sorted(o.asset_key.to_user_string() for o in attributions) == ["orders", "revenue"]
    assert sum(o.metadata[ASSET_COST].value for o in attributions) == pytest.approx(record.cost_usd)
    assert sum(o.metadata[ASSET_NODE_SECONDS].value for o in attributions) == pytest.approx(record.node_seconds)
    assert sum(1 for o in per_asset if o.asset_key == RUN_USAGE_KEY) == 1
