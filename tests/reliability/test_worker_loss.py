"""A local pool's node lost for real under a running Spark application: the worker process and the
executor it runs are killed with SIGKILL while the run's job is on them. The pool sees the node
gone, the autoscaler's tick starts a replacement for the run's demand, Spark moves the lost tasks
onto it and the job ends with the right answer; the lost node and the run are charged once, and no
Spark process is left. Real Spark standalone processes, a real Dagster instance; the control step
is the sensor's (`scale_pool`), ticked by the test."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, build_sensor_context
from dagster._core.instance.ref import InstanceRef

from dpe_dagster.pools import open_pool
from dpe_dagster.pools.local.standalone import WORKER_CLASS, _alive
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.spark.java import spark_process_env
from dpe_dagster.spark.resource import run_app_name
from dpe_dagster.usage.eventlog import read_node_lifetimes, read_run_usage
from dpe_dagster.usage.sensor import record_ended_runs
from tests.support.local import local_environment
from tests.reliability.harness import queue_run, report_run_event, wait_for

pytestmark = pytest.mark.slow
TASKS = 24
TASK_S = 1.0


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (from /proc): what runs on the node with its worker."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@pytest.fixture
def local(tmp_path, monkeypatch):
    for key, value in spark_process_env().items():
        if key in ("JAVA_HOME", "SPARK_HOME", "SPARK_LOCAL_IP"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    env = local_environment(tmp_path, idle_timeout_s=3)
    pool = open_pool(env.pools["spot-etl"], env)
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "dagster")))
    yield env, pool, instance
    pool.shutdown()
    instance.dispose()
    assert pool.pids() == [], "a Spark process of the pool is still running"


def test_a_worker_killed_under_a_run_is_replaced_and_the_run_finishes(local, measured):
    env, pool, instance = local
    config = env.pool("spot-etl")
    memory: dict = {}

    def tick():
        nonlocal memory
        _, memory = scale_pool(instance, config, pool, read_demand(instance, env, {"spot-etl": pool}).of("spot-etl"),
                               memory, time.time())

    run_id = queue_run(instance, "spot-etl", cpus=1)
    tick()
    wait_for("a running worker", lambda: any(n.state == "running" for n in pool.nodes()), 120, 0.5)
    report_run_event(instance, run_id, DagsterEventType.RUN_START)
    tick()
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(pool.master_url).appName(run_app_name("dpe", run_id))
             .config("spark.driver.host", "127.0.0.1").config("spark.ui.enabled", "false")
             .config("spark.executor.memory", "512m").config("spark.cores.max", "1").getOrCreate())
    result: dict = {}

    def job():
        def slow(x, seconds=TASK_S):  # local: pickled by value, the executor's Python cannot import tests
            import time

            time.sleep(seconds)
            return x

        try:
            result["sum"] = spark.sparkContext.parallelize(range(TASKS), TASKS).map(slow).sum()
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            result["error"] = error

    worker = threading.Thread(target=job, daemon=True)
    try:
        worker.start()
        [lost] = wait_for("the run's executor on a worker", lambda: [pool.run_nodes().get(run_id)]
                          if pool.run_nodes().get(run_id) else None, 120, 0.5)
        time.sleep(3 * TASK_S)  # a few tasks done, the others still to run
        lost_pid = pool._worker_instances()[1]
        [lost_node] = [n for n in pool.nodes() if n.id == lost]
        tick()  # the autoscaler has seen the node busy before it goes
        on_node = descendants(lost_pid)
        assert on_node, "the worker runs no executor"
        for pid in [lost_pid, *on_node]:
            os.kill(pid, signal.SIGKILL)
        wait_for("the worker to die", lambda: not _alive(lost_pid, WORKER_CLASS), 30, 0.2)

        # The autoscaler's ticks: the run still wants a node, the dead one is gone, a new one starts.
        def replaced():
            tick()
            return next((n for n in pool.nodes() if n.state == "running" and n.launched_at > lost_node.launched_at),
                        None)

        replacement = wait_for("a replacement worker", replaced, 180, 2)
        worker.join(300)
        assert not worker.is_alive(), "the Spark job did not finish on the replacement"
        assert result == {"sum": sum(range(TASKS))}, result
        assert pool._worker_instances()[1] != lost_pid
    finally:
        spark.stop()
    report_run_event(instance, run_id, DagsterEventType.RUN_SUCCESS)

    def scaled_down():
        tick()
        return not pool.nodes()

    wait_for("the pool to scale down after the idle timeout", scaled_down, 120, 1)
    for _ in range(2):  # twice: the second tick must not write it again
        record_ended_runs(build_sensor_context(instance=instance), env)
    usage = [u for u in read_run_usage(instance) if u.run_id == run_id]
    lifetimes = [(n.node_id, n.launched_at) for n in read_node_lifetimes(instance)]
    measured.add(runs_completed=1, records_lost=int(not usage) + int((lost, lost_node.launched_at) not in lifetimes),
                 records_duplicated=max(0, len(usage) - 1) + len(lifetimes) - len(set(lifetimes)),
                 nodes_leaked=len(pool.pids()))
    assert len(usage) == 1 and usage[0].status == "SUCCESS" and usage[0].cost_usd > 0, usage
    assert lifetimes.count((lost, lost_node.launched_at)) == 1, lifetimes
    assert lifetimes.count((replacement.id, replacement.launched_at)) == 1, lifetimes
    assert pool.pids() == []
