"""A node's busy seconds cover the runs charged to it: both tables come from the same facts.

A run is charged from its start to its end, including steps that run before any Spark executor
exists (the TPC-H data generation); a node's lifetime must never say it was less busy than that."""

from __future__ import annotations

import threading
import time

import pytest
from dagster import DagsterRunStatus, In, Nothing, build_sensor_context, job, op

from dpe_dagster.pools import open_pool
from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from dpe_dagster.tags import pool_tags
from dpe_dagster.usage.attribution import NodeSpan, RunSpan, attribute, node_busy_seconds
from dpe_dagster.usage.eventlog import read_node_lifetimes
from dpe_dagster.usage.charges import usage_for_run
from dpe_dagster.usage.pricing import node_price
from dpe_dagster.usage.records import cost_of
from tests.support.local import local_environment
from tests.support.local import start_spark_run, stop_spark_run, wait_for


def test_busy_is_what_runs_were_charged_on_the_node():
    # Two nodes at different prices; one run from before the second node boots, one half-node run
    # in the middle; demand above the nodes alive at first (the run waits on its node's boot).
    nodes = [NodeSpan("a", "p", 0.36, 10, 110), NodeSpan("b", "p", 0.72, 40, 90)]
    runs = [RunSpan("r1", "p", 1.0, 0, 100), RunSpan("r2", "p", 0.5, 30, 70), RunSpan("r3", "p", 2.0, 50, 60)]
    charges, pools = attribute(runs, nodes)
    busy = {node.node_id: node_busy_seconds(runs, nodes, node) for node in nodes}

    # Every node-second charged to a run lies on some node, and no node is busier than it lived.
    assert sum(busy.values()) == pytest.approx(sum(c.node_seconds for c in charges.values()))
    for node in nodes:
        assert 0 <= busy[node.node_id] <= node.end - node.start
    # Alone (before b boots and after it goes) node a carries all of r1.
    assert busy["a"] == pytest.approx(20 + 10 + 1.5 * 10 / 2 + 2 * 10 / 2 + 1.5 * 10 / 2 + 1 * 20 / 2 + 10)
    assert busy["b"] == pytest.approx(1.5 * 10 / 2 + 2 * 10 / 2 + 1.5 * 10 / 2 + 1 * 20 / 2)
    # Node by node, paid = attributed + idle, to the cost of the pool.
    idle_cost = sum(cost_of(node.end - node.start - busy[node.node_id], node.price_per_hour) for node in nodes)
    busy_cost = sum(cost_of(busy[node.node_id], node.price_per_hour) for node in nodes)
    [pool] = pools.values()
    assert busy_cost == pytest.approx(pool.attributed) and idle_cost == pytest.approx(pool.idle)
    assert busy_cost == pytest.approx(sum(c.cost for c in charges.values()))
    # The same node id twice (a local worker started again) is two lives, each with its own runs.
    again = [NodeSpan("a", "p", 0.36, 0, 10), NodeSpan("a", "p", 0.36, 20, 30)]
    assert [node_busy_seconds([RunSpan("r", "p", 1.0, 5, 25)], again, n) for n in again] == [5, 5]


def test_a_node_is_busy_for_a_run_before_its_spark_step(sqlite_instance, tmp_path):
    """A real local pool and the production sensor: a run whose first step runs no Spark (it
    generates data), then a Spark step on the pool. The lifetime the sensor records when it
    removes the node says it was busy at least as long as the run was charged on it."""
    instance = sqlite_instance
    env = local_environment(tmp_path, node_cpus=2, node_memory_gb=2, default_run_cpus=2, default_run_memory_gb=2,
                            idle_timeout_s=2)
    config = env.pools["spot-etl"]
    pool = open_pool(config, env)
    sensor = build_autoscaler_sensor(env)
    generate_s = 6.0
    spark_runs = []

    @op
    def generate():
        time.sleep(generate_s)  # as tpchgen-cli writes the tables: no executor yet

    @op(ins={"after": In(Nothing)})
    def query(context):
        spark_runs.append(start_spark_run(pool.master_url, context.run_id, cores=2))
        wait_for(lambda: context.run_id in pool.run_nodes(), timeout_s=120, what="the run's executor")
        time.sleep(2)
        stop_spark_run(spark_runs[-1])

    @job(tags=pool_tags("spot-etl"))
    def etl():
        query(after=generate())

    cursor = None

    def tick():
        nonlocal cursor
        context = build_sensor_context(instance=instance, cursor=cursor)
        sensor(context)
        cursor = context.cursor

    try:
        pool.set_target(1)
        wait_for(lambda: [n.state for n in pool.nodes()] == ["running"], what="a running worker")
        result = {}
        worker = threading.Thread(target=lambda: result.update(run=etl.execute_in_process(instance=instance)))
        worker.start()
        deadline = time.monotonic() + 300
        while worker.is_alive() or pool.nodes():
            assert time.monotonic() < deadline, "the run did not end, or its node was never removed"
            tick()
            time.sleep(1)
        worker.join()
        assert result["run"].success
    finally:
        for process in spark_runs:
            stop_spark_run(process)
        pool.shutdown()

    [record] = instance.get_run_records()
    assert record.dagster_run.status == DagsterRunStatus.SUCCESS
    usage = usage_for_run(instance, record, env, {}, node_price)
    [lifetime] = read_node_lifetimes(instance)
    [on] = usage.nodes
    assert on["node_id"] == lifetime.node_id
    # The run is charged its whole span on the one node alive, its first step included...
    assert usage.node_seconds == pytest.approx(record.end_time - record.start_time, rel=1e-6)
    assert usage.node_seconds > generate_s
    # ...and the node's lifetime covers it: busy = what its one run was charged, idle the rest.
    assert lifetime.busy_seconds == pytest.approx(usage.node_seconds, rel=1e-6)
    assert lifetime.idle_seconds == pytest.approx(lifetime.lifetime_seconds - usage.node_seconds, rel=1e-6)
    assert lifetime.idle_seconds >= config.idle_timeout_s
