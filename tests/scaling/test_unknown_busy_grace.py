""""Unknown counts as busy" is right for a tick, not forever: a node whose busy status cannot be
told (a dead Spark master, an unreachable Kubernetes API) is kept for its idle timeout plus the
pool's `unknown_busy_grace_s`, then removed; the ledger says how long it was kept and why."""

from __future__ import annotations

import os
import signal
import time

import pytest

from dpe_dagster.config import ConfigError, parse_pool
from dpe_dagster.pools import open_pool
from dpe_dagster.pools.base import Node, PoolError
from dpe_dagster.pools.local.standalone import MASTER_CLASS, WORKER_CLASS, _alive, _read_pid
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.cursor import observe
from dpe_dagster.scaling.policy import PoolState, RunDemand, plan_pool
from dpe_dagster.usage.eventlog import read_node_lifetimes
from tests.support.local import local_environment
from tests.support.aws import aws, dagster, moto  # noqa: F401  (fixtures and helpers)
from tests.support.cluster import cluster, eks, kube, node_ready, pods_on  # noqa: F401  (fixtures)
from tests.support.cluster import wait_for as wait_until
from tests.support.local import wait_for

RAW = {"provider": "local", "max_size": 4, "node_cpus": 2, "node_memory_gb": 8, "price_per_node_hour": 0.1,
       "idle_timeout_s": 60}


# -- the pure policy -------------------------------------------------------------------------
def test_a_node_of_unknown_status_is_kept_for_the_idle_timeout_plus_the_grace_then_removed():
    pool = parse_pool("spot-etl", {**RAW, "unknown_busy_grace_s": 120})
    unknown = Node("u", "running", launched_at=0.0, busy=True, busy_known=False)
    state = PoolState(1, (unknown,), unknown_since={"u": 1000.0})
    assert plan_pool(pool, state, [], 1179.0).remove == ()
    plan = plan_pool(pool, state, [], 1180.0)
    assert (plan.target, plan.remove, plan.removed_because) == (0, ("u",), {"u": "busy unknown"})
    assert "busy status unknown for >= 180s" in plan.reason
    # Still wanted (a run waits for room): it is replaced in the same plan.
    assert plan_pool(pool, state, [RunDemand("r", 2, 4)], 1180.0).target == 1
    # A node known busy is never removed, however long.
    busy = Node("b", "running", launched_at=0.0, busy=True)
    assert plan_pool(pool, PoolState(1, (busy,)), [], 1e9).remove == ()


def test_the_grace_is_a_pool_field_with_a_default_and_a_clear_error():
    assert parse_pool("p", RAW).unknown_busy_grace_s == 300.0
    with pytest.raises(ConfigError, match=r"pools.p.unknown_busy_grace_s: must be a number >= 0; got -1"):
        parse_pool("p", {**RAW, "unknown_busy_grace_s": -1})


def test_unknown_time_is_not_busy_time_and_idle_time_starts_again_once_known():
    idle = Node("n", "running", 0.0, busy=False)
    unknown = Node("n", "pending", 0.0, busy=True, busy_known=False)
    memory = observe([idle], {}, 100.0)
    memory = observe([unknown], memory, 110.0)
    assert (memory["n"].unknown_since, memory["n"].idle_since) == (110.0, None)
    memory = observe([unknown], memory, 130.0)
    assert (memory["n"].unknown_seconds, memory["n"].busy_seconds) == (20.0, 0.0)
    memory = observe([idle], memory, 140.0)
    assert (memory["n"].unknown_since, memory["n"].idle_since) == (None, 140.0)


# -- a real local pool whose Spark master dies -------------------------------------------------


@pytest.mark.slow
def test_workers_of_a_dead_master_are_kept_for_the_grace_then_stopped_and_the_ledger_says_why(
        tmp_path, sqlite_instance):
    env = local_environment(tmp_path, min_size=1, idle_timeout_s=2, unknown_busy_grace_s=4)
    config = env.pools["spot-etl"]
    pool = open_pool(config, env)
    try:
        pool.set_target(1)
        wait_for(lambda: [n for n in pool.nodes() if n.state == "running"], timeout_s=90, what="a running worker")
        worker = pool._worker_instances()[1]
        tick, memory = scale_pool(sqlite_instance, config, pool, [], {}, time.time())
        assert memory["spot-etl-worker-1"].unknown_since is None

        master = _read_pid(pool._pid_file(MASTER_CLASS, 1))
        os.kill(master, signal.SIGKILL)
        wait_for(lambda: not _alive(master, MASTER_CLASS), timeout_s=90, what="the master to die")
        died = time.time()
        [node] = pool.nodes()
        assert (node.busy, node.busy_known) == (True, False)
        # The provider refuses it as an idle removal: nobody can tell that it is idle.
        with pytest.raises(PoolError, match="refusing to remove busy node"):
            pool.remove_nodes([node.id])

        removed = []
        while not removed:
            assert time.time() - died < 60, "a worker of unknown status must not be kept forever"
            tick, memory = scale_pool(sqlite_instance, config, pool, [], memory, time.time())
            removed = tick.removed
            if not removed:
                assert _alive(worker, WORKER_CLASS)
                time.sleep(0.5)
        kept = time.time() - died
        [lifetime] = removed
        assert lifetime.node_id == "spot-etl-worker-1" and lifetime.removed_because == "busy unknown"
        assert kept >= config.idle_timeout_s + config.unknown_busy_grace_s
        assert config.idle_timeout_s + config.unknown_busy_grace_s <= lifetime.unknown_seconds <= kept + 1
        assert not _alive(worker, WORKER_CLASS)
        assert [r.removed_because for r in read_node_lifetimes(sqlite_instance)] == ["busy unknown"]
        # min_size 1: the pool gets a worker again, under a new master.
        wait_for(lambda: [n for n in pool.nodes() if n.state == "running" and n.busy_known],
                 timeout_s=90, what="a replacement worker under a new master")
    finally:
        pool.shutdown()
    assert pool.pids() == []


# -- an Auto Scaling group whose Kubernetes API stops answering (moto + the real control plane) --
def test_instances_kubernetes_cannot_see_are_kept_for_the_grace_then_terminated(aws, eks, kube, dagster, tmp_path,
                                                                                 monkeypatch):
    from dpe_dagster.pools.aws.emulator import create_groups, free_port
    from tests.cluster.control_plane import write_kubeconfig
    from tests.support.aws import clients, ec2_states, environment

    env = environment(aws.url, labels={"dpe.io/pool": "spot-etl"}, idle_timeout_s=1, unknown_busy_grace_s=2,
                      settings={"group_name": "test-spot", "busy_source": "kubernetes"})
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    config = env.pool("spot-etl")
    pool = open_pool(config, env)
    pool.set_target(1)
    [iid] = [n.id for n in pool.nodes()]
    node = eks.node_name(iid)  # the instance joins the cluster as an EKS node
    wait_until(f"node {node} Ready", lambda: node_ready(eks.core, node))
    # A run's pod on it: busy when last seen.
    kube.apply([{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "dagster-run-1", "namespace": "default"},
                 "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"dagster/run-id": "1"}}, "spec": {
                     "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": node},
                     "tolerations": [{"key": "dpe.io/pool", "operator": "Exists"}],
                     "containers": [{"name": "main", "image": "busybox",
                                     "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}}}])
    wait_until("the run's pod running", lambda: any(p.metadata.name.startswith("dagster-run-1")
                                                     and p.status.phase == "Running" for p in pods_on(eks.core, node)))
    wait_until("the pool seeing its node busy", lambda: [(n.state, n.busy, n.busy_known) for n in pool.nodes()]
               == [("running", True, True)])
    tick, memory = scale_pool(dagster, config, pool, [], {}, time.time())
    assert tick.removed == [] and memory[iid].busy_seconds == 0.0 and memory[iid].unknown_since is None

    # The Kubernetes API stops answering: the autoscaler's pool asks an endpoint where nothing
    # listens (the same CA and a token, as a kubeconfig whose API server went away).
    dead = write_kubeconfig(tmp_path / "unreachable.kubeconfig", f"https://127.0.0.1:{free_port()}", kube.ca_file,
                            "any-token")
    monkeypatch.setenv("KUBECONFIG", str(dead))
    pool = open_pool(config, env)
    [seen] = pool.nodes()
    assert (seen.id, seen.busy, seen.busy_known) == (iid, True, False)
    start = time.time()
    tick, memory = scale_pool(dagster, config, pool, [], memory, start)
    assert tick.removed == [] and memory[iid].unknown_since == start
    tick, memory = scale_pool(dagster, config, pool, [], memory, start + 2.9)
    assert tick.removed == [], "kept while unknown, for the idle timeout plus the grace"
    assert ec2_states(ec2, [iid])[iid] == "running"
    tick, memory = scale_pool(dagster, config, pool, [], memory, start + 3.0)
    assert [(r.node_id, r.removed_because) for r in tick.removed] == [(iid, "busy unknown")]
    assert tick.removed[0].unknown_seconds >= 3.0
    assert ec2_states(ec2, [iid])[iid] in ("shutting-down", "terminated")
    assert [r.removed_because for r in read_node_lifetimes(dagster)] == ["busy unknown"]
