"""A run's usage includes every node it ran on: a node lost under the run (gone from AWS before the
ledger wrote the run, recorded by the autoscaler only after) is charged to the run by one visible
amendment, and never twice (real Dagster instance, moto server on loopback)."""

from __future__ import annotations

import time

import pytest
from dagster import DagsterEventType
from dagster._core.events import DagsterEvent

from dpe_dagster.pools import open_pool
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.usage.eventlog import read_node_lifetimes, read_run_usage
from dpe_dagster.usage.writes import AMENDS
from dpe_dagster.usage.records import RUN_USAGE_KEY
from tests.reliability.harness import advance, clients, queue_run
from tests.support.ledger import ledger_tick  # noqa: F401  (fixtures and helpers)

POOL = "spot-etl"


def run_usage_observations(instance, run_id):
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_OBSERVATION).records
    observations = [r.event_log_entry.dagster_event.event_specific_data.asset_observation for r in records]
    return [o for o in observations if o.asset_key == RUN_USAGE_KEY]


def covered(spans, start, end) -> float:
    """Seconds of [start, end) inside at least one of the spans."""
    total, reached = 0.0, start
    for a, b in sorted(spans):
        a, b = max(a, reached), min(b, end)
        if b > a:
            total, reached = total + b - a, b
    return total


def test_a_node_lost_under_a_run_and_recorded_after_it_is_charged_to_the_run_once(aws_sim):
    env, instance, autoscaling = aws_sim(idle_timeout_s=600)
    config = env.pool(POOL)
    pool = open_pool(config, env)
    _, ec2 = clients(autoscaling.meta.endpoint_url)
    memory: dict = {}

    def autoscaler_tick():
        nonlocal memory
        tick, memory = scale_pool(instance, config, pool, read_demand(instance, env).of(POOL), memory, time.time())
        return tick

    run_id = queue_run(instance, POOL, cpus=1)
    autoscaler_tick()
    (node,) = pool.nodes()
    advance(instance, run_id, DagsterEventType.RUN_START)
    autoscaler_tick()
    time.sleep(2)
    autoscaler_tick()  # the last look that sees the node
    ec2.terminate_instances(InstanceIds=[node.id])  # the spot instance is taken away under the run
    assert node.id not in {n.id for n in pool.nodes()}
    instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.RUN_SUCCESS.value, job_name="tpch"),
                                  run_id=run_id)

    cursor = ledger_tick(env, instance, None)  # before the autoscaler has noticed the loss
    (first,) = read_run_usage(instance)
    assert node.id not in {n["node_id"] for n in first.nodes}

    tick = autoscaler_tick()
    assert [lost.node_id for lost in tick.lost] == [node.id]
    (lifetime,) = [n for n in read_node_lifetimes(instance) if n.node_id == node.id]

    for _ in range(3):
        cursor = ledger_tick(env, instance, cursor)
    ledger_tick(env, instance, None)  # a replay from scratch amends nothing again

    (record,) = read_run_usage(instance)
    run = instance.get_run_record_by_id(run_id)
    assert min(lifetime.removed_at, run.end_time) - max(lifetime.launched_at, run.start_time) > 1.5
    assert node.id in {n["node_id"] for n in record.nodes}
    # The run holds half a node whenever one is alive: the lost node, then the group's replacement.
    alive = [(lifetime.launched_at, lifetime.removed_at)] + [(n.launched_at, run.end_time) for n in pool.nodes()]
    assert record.node_seconds == pytest.approx(record.node_share * covered(alive, run.start_time, run.end_time),
                                                rel=1e-6)
    assert record.node_seconds > first.node_seconds and record.cost_usd > first.cost_usd
    # On the run's page: the first record, then one amendment saying what it adds.
    observations = run_usage_observations(instance, run_id)
    assert len(observations) == 2
    assert AMENDS not in observations[0].metadata
    assert node.id in observations[1].metadata[AMENDS].value and "amended" in observations[1].description
