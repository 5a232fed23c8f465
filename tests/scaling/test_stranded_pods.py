"""Room that is not there, on the real control plane.

dpe packs a pool on what runs can have of a node (`room_cpus`: the node less the kubelet's
reservation and the DaemonSets, EKS's figures for aws_asg). Where that model is wrong (here: a pool
configured to count a 2-vCPU node's two whole CPUs), the scheduler leaves a pod Unschedulable that
dpe believes fits, and the autoscaler asks for a node for it anyway: no pod of a pool is left
without a scale-up (the safety net Cluster Autoscaler has)."""

from __future__ import annotations

import time

from dagster import DagsterEventType

from dpe_dagster.pools import look_ahead, open_pool
from dpe_dagster.pools.aws.emulator import create_groups
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.demand import read_demand
from tests.reliability.harness import advance, queue_run
from tests.support.aws import aws, clients, dagster, environment, moto  # noqa: F401  (fixtures and helpers)
from tests.support.cluster import cluster, eks, kube, node_ready, pods_on, wait_for  # noqa: F401  (fixtures)


def run_pod(core, run_id: str) -> None:
    """A run's pod as the k8s run launcher makes it: the pool's selector and toleration, 1 CPU."""
    core.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"dagster-run-{run_id[:8]}", "labels": {"dagster/run-id": run_id, "dpe.io/pool": "spot-etl"}},
        "spec": {"nodeSelector": {"dpe.io/pool": "spot-etl"},
                 "tolerations": [{"key": "dpe.io/pool", "operator": "Equal", "value": "spot-etl",
                                  "effect": "NoSchedule"}],
                 "containers": [{"name": "main", "image": "dpe:1",
                                 "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}})


def test_a_pod_the_scheduler_cannot_place_gets_a_node_though_dpe_counted_room_for_it(aws, eks, kube, dagster):
    env = environment(aws.url, labels={"dpe.io/pool": "spot-etl"},
                      taints=[{"key": "dpe.io/pool", "value": "spot-etl", "effect": "NoSchedule"}],
                      settings={"group_name": "test-spot", "busy_source": "kubernetes",
                                "instance_types": ["m6i.large"]},
                      # Wrong on purpose: a node's whole 2 CPUs counted, where pods can have 1.805.
                      reserved_cpus=0, reserved_memory_gb=0, default_run_cpus=1, default_run_memory_gb=1)
    create_groups(env, *clients(aws.url))
    config, pool = env.pool("spot-etl"), open_pool(env.pool("spot-etl"), env)
    core = kube.core()
    runs = [queue_run(dagster, "spot-etl", cpus=1) for _ in range(2)]
    tick, memory = scale_pool(dagster, config, pool, read_demand(dagster, env, {"spot-etl": pool}).of("spot-etl"), {},
                              time.time())
    assert pool.target() == 1, tick.plan.reason  # two 1-CPU runs on one 2-CPU node, as dpe counts
    [first_node] = [eks.node_name(n.id) for n in pool.nodes()]
    wait_for("the node ready", lambda: node_ready(core, first_node))
    for run_id in runs:
        advance(dagster, run_id, DagsterEventType.RUN_START)
        run_pod(core, run_id)

    def unschedulable():
        pods = core.list_namespaced_pod("default").items
        placed = [p for p in pods if p.spec.node_name]
        left = [p for p in pods if not p.spec.node_name and any(
            c.reason == "Unschedulable" for c in p.status.conditions or [])]
        return left if len(placed) == 1 and len(left) == 1 else None

    [stranded] = wait_for("the second pod left Unschedulable by the scheduler", unschedulable)

    def tick_demand():
        look_ahead([pool])  # a tick starts
        return read_demand(dagster, env, {"spot-etl": pool}).of("spot-etl")

    # The tick reads pods through the process's watch of them: it sees the pod's state within moments.
    demand = wait_for("the tick seeing the stranded pod", lambda: (d := tick_demand()) and any(
        run.stranded for run in d) and d)
    assert [d.run_id for d in demand if d.stranded] == [f"pod:default/{stranded.metadata.name}"]
    tick, memory = scale_pool(dagster, config, pool, demand, memory, time.time())
    assert pool.target() == 2, tick.plan.reason
    wait_for("the stranded pod scheduled on the new node", lambda: core.read_namespaced_pod(
        stranded.metadata.name, "default").spec.node_name not in (None, first_node), timeout_s=30)
    # Once it is placed nothing is stranded, and nothing more is asked for.
    demand = wait_for("the tick seeing it placed", lambda: (d := tick_demand()) and not any(
        run.stranded for run in d) and d)
    tick, memory = scale_pool(dagster, config, pool, demand, memory, time.time())
    assert pool.target() == 2, tick.plan.reason


def test_a_pod_waiting_for_a_node_on_its_way_asks_for_no_other(aws, eks, kube, dagster):
    """Unschedulable while its node boots is not stranded: no second node for it."""
    env = environment(aws.url, labels={"dpe.io/pool": "spot-etl"},
                      settings={"group_name": "test-spot", "busy_source": "kubernetes",
                                "instance_types": ["m6i.large"]}, default_run_cpus=1, default_run_memory_gb=1)
    create_groups(env, *clients(aws.url))
    config, pool = env.pool("spot-etl"), open_pool(env.pool("spot-etl"), env)
    core = kube.core()
    run_id = queue_run(dagster, "spot-etl", cpus=1)
    eks.boot_s = 5.0  # the instance takes a while to join
    run_pod(core, run_id)
    wait_for("the pod Unschedulable (no node yet)", lambda: any(
        c.reason == "Unschedulable" for c in core.read_namespaced_pod(
            f"dagster-run-{run_id[:8]}", "default").status.conditions or []))
    tick, memory = scale_pool(dagster, config, pool, read_demand(dagster, env, {"spot-etl": pool}).of("spot-etl"), {},
                              time.time())
    assert pool.target() == 1, tick.plan.reason
    tick, memory = scale_pool(dagster, config, pool, read_demand(dagster, env, {"spot-etl": pool}).of("spot-etl"),
                              memory, time.time())
    assert pool.target() == 1, tick.plan.reason  # the stranded pod waits for the node on its way
