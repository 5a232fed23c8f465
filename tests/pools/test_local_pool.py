"""The local pool: real Spark standalone processes, started and stopped; a busy worker is never stopped."""

from __future__ import annotations

import os
import signal
import socket
import time
from contextlib import closing

import pytest

from dpe_dagster.pools import open_pool
from dpe_dagster.pools.base import PoolError
from dpe_dagster.pools.local.standalone import _alive
from dpe_dagster.scaling.policy import PoolState, RunDemand, plan_pool
from dpe_dagster.spark.java import spark_process_env
from tests.support.local import local_environment
from tests.support.local import wait_for  # noqa: F401  (fixtures and helpers)

pytestmark = pytest.mark.slow


@pytest.fixture
def pool(tmp_path):
    env = local_environment(tmp_path)
    pool = open_pool(env.pools["spot-etl"], env)
    yield pool
    pool.shutdown()
    assert pool.pids() == []


def test_workers_start_when_the_target_grows_and_stop_when_removed(pool):
    assert pool.nodes() == [] and pool.target() == 0
    pool.set_target(2)
    nodes = wait_for(lambda: [n for n in pool.nodes() if n.state == "running"] if len(
        [n for n in pool.nodes() if n.state == "running"]) == 2 else None, what="two running workers")
    assert {n.id for n in nodes} == {"spot-etl-worker-1", "spot-etl-worker-2"}
    assert not any(n.busy for n in nodes)
    assert len(pool.pids()) == 3  # master + 2 workers, all alive
    with pytest.raises(PoolError, match="scale in goes through remove_nodes"):
        pool.set_target(1)

    pool.remove_nodes(["spot-etl-worker-1"])
    assert [n.id for n in pool.nodes()] == ["spot-etl-worker-2"]
    assert pool.target() == 1
    pool.remove_nodes(["spot-etl-worker-2"])
    assert pool.nodes() == [] and pool.target() == 0
    assert pool.pids() == []  # the master goes with the last worker


def test_a_worker_whose_port_is_taken_still_becomes_a_running_node(pool):
    # Anything may hold the configured port (a client's ephemeral port, another program): Spark then
    # listens on the next one, and the pool must still recognise its worker.
    with closing(socket.socket()) as squatter:
        try:
            squatter.bind(("127.0.0.1", pool.settings.worker_port_base + 1))
            squatter.listen()
        except OSError:
            pass  # something else already holds it: the same situation
        pool.set_target(1)
        node = wait_for(lambda: next((n for n in pool.nodes() if n.state == "running"), None),
                        what="the worker on the next free port to register")
    assert node.id == "spot-etl-worker-1" and not node.busy
    pool.remove_nodes([node.id])
    assert pool.pids() == []


def test_a_worker_running_executors_is_busy_and_never_stopped(pool, monkeypatch):
    for key, value in spark_process_env().items():
        if key in ("JAVA_HOME", "SPARK_HOME", "SPARK_LOCAL_IP"):
            monkeypatch.setenv(key, value)
    pool.set_target(1)
    wait_for(lambda: any(n.state == "running" for n in pool.nodes()), what="a running worker")
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(pool.master_url).appName("dpe-busy-test")
             .config("spark.driver.host", "127.0.0.1").config("spark.ui.enabled", "false")
             .config("spark.executor.memory", "512m").config("spark.cores.max", "1").getOrCreate())
    try:
        assert spark.range(1000).count() == 1000
        node = wait_for(lambda: next((n for n in pool.nodes() if n.busy), None), what="the worker to be busy")
        worker_pid = pool._worker_instances()[1]

        # The policy will not pick it, however long it has been "idle" by the caller's memory...
        config = pool.config
        plan = plan_pool(config, PoolState(1, tuple(pool.nodes()), {node.id: 0.0}), [], now=time.time())
        assert plan.remove == ()
        # ...and the provider refuses it even when asked directly.
        with pytest.raises(PoolError, match="refusing to remove busy node"):
            pool.remove_nodes([node.id])
        assert _alive(worker_pid, "org.apache.spark.deploy.worker.Worker")
    finally:
        spark.stop()
    wait_for(lambda: not any(n.busy for n in pool.nodes()), what="the worker to become idle")
    pool.remove_nodes([node.id])
    assert not _alive(worker_pid, "org.apache.spark.deploy.worker.Worker")


def test_a_worker_that_dies_is_replaced_by_the_next_scale_up(pool):
    pool.set_target(1)
    wait_for(lambda: any(n.state == "running" for n in pool.nodes()), what="a running worker")
    dead = pool._worker_instances()[1]
    os.kill(dead, signal.SIGKILL)
    wait_for(lambda: not _alive(dead, "org.apache.spark.deploy.worker.Worker"), what="the worker to die")
    # Like an instance an autoscaling group lost, the dead worker no longer counts toward the target...
    assert pool.nodes() == [] and pool.target() == 0
    # ...so a run that needs a node gets a new one.
    plan = plan_pool(pool.config, PoolState(pool.target(), tuple(pool.nodes())), [RunDemand("r", 1, 0.5)], time.time())
    assert plan.target == 1
    pool.set_target(plan.target)
    node = wait_for(lambda: next((n for n in pool.nodes() if n.state == "running"), None), what="the replacement")
    assert pool._worker_instances()[1] != dead
    assert pool.target() == 1 and not node.busy
    # its log starts afresh; the dead worker's is kept beside it
    assert list(pool.log_dir.glob("spark-*Worker-1-*.out.1"))


def test_a_master_port_held_by_another_program_is_a_clear_error_and_starts_nothing(pool):
    with closing(socket.socket()) as squatter:
        squatter.bind(("127.0.0.1", pool.settings.master_port))
        squatter.listen()
        with pytest.raises(PoolError, match=rf"port {pool.settings.master_port} \(settings.master_port\) is taken"):
            pool.set_target(1)
    assert pool.pids() == [] and pool.nodes() == []


def test_a_worker_waits_for_its_master_as_a_pending_node_and_gives_up_saying_why(pool):
    worker = "org.apache.spark.deploy.worker.Worker"
    # no master is started: the worker's JVM must not start (it would retry only after 5-15 s)
    pid = pool._launch(worker, 1, [pool.master_url], after_port=pool.settings.master_port, wait_s=2)
    assert [(n.id, n.state) for n in pool.nodes()] == [("spot-etl-worker-1", "pending")]
    wait_for(lambda: not _alive(pid, worker), timeout_s=30, what="the worker to give up")
    assert pool.nodes() == []
    log = next(pool.log_dir.glob("spark-*Worker-1-*.out")).read_text()
    assert f"nothing listened on port {pool.settings.master_port} (the Spark master) within 2s" in log
