"""Production demand knows which node each run holds, from Spark itself: a real local pool, real
Spark applications named after their Dagster runs, and the production control step.

Two 1-CPU runs hold one CPU on each of two 2-CPU workers; a 2-CPU run waits. The pool's total
free room (2 CPUs) would hold it, but no single worker has 2 CPUs free: the plan must ask for a
third node, where packing every run from scratch would have said two."""

from __future__ import annotations

import time

import pytest
from dagster import DagsterRunStatus, build_sensor_context
from dagster._core.test_utils import create_run_for_test

from dpe_dagster.pools import open_pool
from dpe_dagster.scaling.control import request_capacity, scale_pool
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.scaling.policy import PoolState, nodes_for, plan_pool
from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from dpe_dagster.spark.resource import run_app_name, run_id_of_app
from dpe_dagster.tags import pool_tags
from tests.support.local import local_environment
from tests.support.local import start_spark_run, stop_spark_run, wait_for  # noqa: F401  (fixtures and helpers)

pytestmark = pytest.mark.slow


def test_app_names_carry_the_full_run_id():
    run_id = "0f3a9c2e-1b2d-4e5f-8a9b-0c1d2e3f4a5b"
    assert run_app_name("dpe", run_id) == f"dpe-{run_id}"
    assert run_id_of_app(run_app_name("dpe-etl", run_id)) == run_id
    assert run_id_of_app("dpe-0f3a9c2e") is None and run_id_of_app("someone-elses-app") is None


def test_a_run_that_fits_only_in_the_total_free_room_gets_a_third_node(sqlite_instance, tmp_path):
    instance = sqlite_instance
    env = local_environment(tmp_path, node_cpus=2, node_memory_gb=2, max_size=3, idle_timeout_s=1)
    config = env.pools["spot-etl"]
    pool = open_pool(config, env)
    spark_runs = []
    try:
        pool.set_target(2)
        wait_for(lambda: sum(n.state == "running" for n in pool.nodes()) == 2, what="two running workers")
        held = [create_run_for_test(instance, job_name="etl", tags=pool_tags("spot-etl", cpus=1),
                                    status=DagsterRunStatus.STARTED) for _ in range(2)]
        waiting = create_run_for_test(instance, job_name="etl", tags=pool_tags("spot-etl", cpus=2),
                                      status=DagsterRunStatus.STARTING)  # launched, no executor yet
        for run in held:
            spark_runs.append(start_spark_run(pool.master_url, run.run_id, cores=1))
            # One at a time, so the second application is scheduled knowing where the first went.
            wait_for(lambda run=run: run.run_id in pool.run_nodes(), timeout_s=120, what=f"run {run.run_id} on a node")

        # Spark standalone spreads applications: one run on each worker, as Spark itself reports it.
        where = pool.run_nodes()
        assert set(where) == {run.run_id for run in held}
        assert sorted(where.values()) == ["spot-etl-worker-1", "spot-etl-worker-2"]
        assert all(node.busy for node in pool.nodes())

        known = {run.run_id: run for run in read_demand(instance, env, {"spot-etl": pool}).of("spot-etl")}
        assert {run_id: known[run_id].node_id for run_id in where} == where
        assert known[waiting.run_id].node_id is None

        # Blind packing (no node known) repacks the three runs onto the two nodes and asks for no more.
        blind = read_demand(instance, env).of("spot-etl")
        assert nodes_for(blind, config.node_cpus, config.node_memory_gb) == 2
        blind_plan = plan_pool(config, PoolState(pool.target(), tuple(pool.nodes())), blind, time.time())
        assert blind_plan.target == 2

        # The production control step, with the knowledge: a third node, started for real.
        tick, _ = scale_pool(instance, config, pool, list(known.values()), {}, time.time(),
                             fresh_demand=lambda: read_demand(instance, env, {"spot-etl": pool}).of("spot-etl"))
        assert tick.plan.target == 3, tick.plan.reason
        assert pool.target() == 3
        wait_for(lambda: sum(n.state == "running" for n in pool.nodes()) == 3, what="a third running worker")

        # The launcher's pass and the sensor read the same knowledge: while the run waits for the
        # third worker, it is wanted, even idle past the idle timeout (blind, it would be removed).
        assert request_capacity(instance, env, "spot-etl").target == 3
        sensor = build_autoscaler_sensor(env)
        cursor = None
        for _ in range(3):
            context = build_sensor_context(instance=instance, cursor=cursor)
            reason = sensor(context).skip_message
            cursor = context.cursor
            time.sleep(config.idle_timeout_s)
        assert "steady at 3" in reason, reason
        assert len(pool.nodes()) == 3 and pool.target() == 3
    finally:
        for process in spark_runs:
            stop_spark_run(process)
        pool.shutdown()
    assert pool.pids() == []
