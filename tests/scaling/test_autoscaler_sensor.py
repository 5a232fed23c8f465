"""The autoscaler sensor against a real local pool: scale up for queued runs at once, repeated
ticks change nothing, scale down only after the idle timeout, never below min."""

from __future__ import annotations

import time

import pytest
from dagster import DagsterEventType, DagsterRunStatus, build_sensor_context
from dagster._core.events import DagsterEvent
from dagster._core.test_utils import create_run_for_test

from dpe_dagster.pools import open_pool
from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from dpe_dagster.spark.java import spark_process_env
from dpe_dagster.tags import pool_tags
from dpe_dagster.usage.eventlog import read_node_lifetimes
from tests.support.local import local_environment
from tests.support.local import wait_for

pytestmark = pytest.mark.slow


def tick(sensor, instance, cursor):
    context = build_sensor_context(instance=instance, cursor=cursor)
    sensor(context)
    return context.cursor


def test_sensor_scales_up_holds_and_scales_down_once(sqlite_instance, tmp_path, monkeypatch):
    instance = sqlite_instance
    env = local_environment(tmp_path, idle_timeout_s=4)
    pool = open_pool(env.pools["spot-etl"], env)
    sensor = build_autoscaler_sensor(env)
    try:
        # Two 1-CPU runs waiting: two 1-CPU nodes, at once.
        runs = [create_run_for_test(instance, job_name="etl", tags=pool_tags("spot-etl", cpus=1),
                                    status=DagsterRunStatus.STARTED) for _ in range(2)]
        for run in runs:  # started as the run worker starts them: they are charged from now
            instance.run_storage.handle_run_event(run.run_id, DagsterEvent(DagsterEventType.RUN_START.value,
                                                                           job_name="etl"))
        cursor = tick(sensor, instance, None)
        assert pool.target() == 2
        wait_for(lambda: sum(n.state == "running" for n in pool.nodes()) == 2, what="two workers")
        pids = sorted(pool.pids())

        # The runs' work: a Spark application with an executor on each worker.
        for key, value in spark_process_env().items():
            if key in ("JAVA_HOME", "SPARK_HOME", "SPARK_LOCAL_IP"):
                monkeypatch.setenv(key, value)
        from pyspark.sql import SparkSession

        spark = (SparkSession.builder.master(pool.master_url).appName("dpe-sensor-test")
                 .config("spark.driver.host", "127.0.0.1").config("spark.ui.enabled", "false")
                 .config("spark.executor.memory", "512m").config("spark.cores.max", "2").getOrCreate())
        try:
            wait_for(lambda: all(n.busy for n in pool.nodes()), what="both workers busy")
            for _ in range(2):  # consecutive ticks see the nodes busy: busy time accrues
                cursor = tick(sensor, instance, cursor)
                time.sleep(0.5)
            # Repeated ticks (and a replayed one) change nothing: same target, same processes.
            for replay in (cursor, cursor):
                cursor = tick(sensor, instance, replay)
            assert pool.target() == 2 and sorted(pool.pids()) == pids
        finally:
            spark.stop()

        # Runs end: nodes are idle, but stay until the idle timeout has passed.
        for run in runs:
            instance.report_run_canceled(run)
        wait_for(lambda: not any(n.busy for n in pool.nodes()), what="workers idle")
        cursor = tick(sensor, instance, cursor)
        first_idle = time.time()
        assert len(pool.nodes()) == 2
        while time.time() - first_idle < 3:
            cursor = tick(sensor, instance, cursor)
            assert len(pool.nodes()) == 2, "removed before the idle timeout"
            time.sleep(0.5)
        wait_for(lambda: tick(sensor, instance, cursor) is not None and pool.nodes() == [], timeout_s=30,
                 what="scale-down to zero")
        assert pool.target() == 0 and pool.pids() == []

        lifetimes = read_node_lifetimes(instance)
        assert sorted(n.node_id for n in lifetimes) == ["spot-etl-worker-1", "spot-etl-worker-2"]
        for node in lifetimes:
            assert node.lifetime_seconds >= 4 and node.idle_seconds >= 4 and node.busy_seconds > 0
            assert node.cost_usd == pytest.approx(node.lifetime_seconds / 3600 * 0.036)
        tick(sensor, instance, None)
        assert len(read_node_lifetimes(instance)) == 2, "a later tick must not record a removed node again"
    finally:
        pool.shutdown()
    assert pool.pids() == []


def test_min_size_is_kept_without_demand(sqlite_instance, tmp_path):
    env = local_environment(tmp_path, min_size=1, idle_timeout_s=0)
    pool = open_pool(env.pools["spot-etl"], env)
    sensor = build_autoscaler_sensor(env)
    try:
        cursor = tick(sensor, sqlite_instance, None)
        assert pool.target() == 1
        wait_for(lambda: any(n.state == "running" for n in pool.nodes()), what="the minimum node")
        for _ in range(3):
            cursor = tick(sensor, sqlite_instance, cursor)
        assert len(pool.nodes()) == 1 and pool.target() == 1
    finally:
        pool.shutdown()
