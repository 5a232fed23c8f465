"""The usage ledger: one record per ended run, under repeated and replayed sensor ticks, on
SQLite and PostgreSQL, read back only through Dagster's event log."""

from __future__ import annotations

import math
import time

import pytest
from dagster import (
    AssetObservation, DagsterEventType, MetadataValue, TimestampMetadataValue, asset, build_sensor_context, materialize,
)
from dagster._core.test_utils import create_run_for_test

from dpe_dagster.config import parse_environment
from dpe_dagster.tags import pool_tags
from dpe_dagster.usage.eventlog import observations, read_node_lifetimes, read_run_usage
from dpe_dagster.usage.writes import record_node_lifetime
from dpe_dagster.usage.records import (
    ASSET_COST, ASSET_NODE_SECONDS, EXACT, NODE_USAGE_KEY, RUN_USAGE_KEY, NodeLifetime, UsageRecord,
)
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
    parts = record.asset_costs
    assert sum(p["cost_usd"] for p in parts.values()) == pytest.approx(record.cost_usd)
    assert sum(p["node_seconds"] for p in parts.values()) == pytest.approx(record.node_seconds)
    for o in attributions:  # each asset shows its part, to a millionth of a dollar and a tenth of a second
        part = parts[o.asset_key.to_user_string()]
        assert o.metadata[ASSET_COST].value == round(part["cost_usd"], 6)
        assert o.metadata[ASSET_NODE_SECONDS].value == round(part["node_seconds"], 1)
    assert sum(1 for o in per_asset if o.asset_key == RUN_USAGE_KEY) == 1


def test_the_ui_shows_dates_and_few_digits_while_the_ledger_reads_exact_figures(instance):
    ok, *_ = make_runs(instance)
    tick(instance, None)
    record = next(r for r in read_run_usage(instance) if r.run_id == ok)
    (shown,) = [m for o in observations(instance, RUN_USAGE_KEY)
                if (m := o.asset_observation.metadata)["run_id"].value == ok]
    assert all(isinstance(shown[k], TimestampMetadataValue) for k in ("started_at", "ended_at"))
    assert (shown["started_at"].value, shown["ended_at"].value) == (record.started_at, record.ended_at)
    assert shown["cost_usd"].value == round(record.cost_usd, 6)
    assert shown["node_seconds"].value == round(record.node_seconds, 1)
    assert shown["asset_costs"].value["orders"]["cost_usd"] == round(record.asset_costs["orders"]["cost_usd"], 6)
    # the figures read back are the exact ones: the ledger's arithmetic holds to 1e-9
    assert math.isclose(record.cost_usd, record.node_seconds / 3600 * 0.36, rel_tol=1e-9)
    assert sum(p["cost_usd"] for p in record.asset_costs.values()) == pytest.approx(record.cost_usd, rel=1e-9)

    node = next(observations(instance, NODE_USAGE_KEY)).asset_observation.metadata
    lifetime = read_node_lifetimes(instance)[0]
    assert isinstance(node["launched_at"], TimestampMetadataValue) and isinstance(node["removed_at"], TimestampMetadataValue)
    assert node["cost_usd"].value == round(lifetime.cost_usd, 6)
    assert node["lifetime_seconds"].value == round(lifetime.lifetime_seconds, 1)


def plain(metadata):
    """A record's metadata with its times as unix seconds, its numbers unrounded and no `exact` entry."""
    exact = metadata.pop(EXACT).value
    metadata = {k: MetadataValue.float(v.value) if isinstance(v, TimestampMetadataValue) else v
                for k, v in metadata.items()}
    return {**metadata, **{k: MetadataValue.json(v) if isinstance(v, dict) else MetadataValue.float(v)
                           for k, v in exact.items()}}


def test_records_with_plain_numbers_read_back_alongside_the_shown_ones(instance):
    def record(run_id, started_at):
        cost = 0.36 * 12.345678901 / 3600
        return UsageRecord(run_id, "job", "spot-etl", "t", "SUCCESS", 1.0, 2.0, 1 / 3, 12.345678901, 0.36, "config",
                           cost, started_at, started_at + 37.0370367, "spot", ("orders",),
                           {"orders": {"cost_usd": cost, "node_seconds": 12.345678901, "team": "t"}})

    def lifetime(node_id, launched_at):
        return NodeLifetime(node_id, "spot-etl", "spot", "local", launched_at, launched_at + 100.123456,
                            busy_seconds=12.345678901, price_per_node_hour=0.36)

    now = time.time()
    runs = [record("plain", now - 100.5), record("shown", now - 50.25)]
    nodes = [lifetime("plain-node", now - 200.5), lifetime("shown-node", now - 150.25)]
    for (run, node), as_written in zip(zip(runs, nodes), (plain, dict)):
        for key, written in ((RUN_USAGE_KEY, run), (NODE_USAGE_KEY, node)):
            instance.report_runless_asset_event(AssetObservation(asset_key=key,
                                                                 metadata=as_written(written.to_metadata())))
    assert read_run_usage(instance) == runs and read_node_lifetimes(instance) == nodes
