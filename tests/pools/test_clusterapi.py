"""The clusterapi provider on the real control plane: a MachineDeployment of Cluster API (its CRDs
installed from the pinned module) whose Machines the stand-in controllers turn into Nodes
(tests/cluster/cluster_api.py). What every provider does is in the contract (contract.py); here,
the whole cycle from a queued run to its node's usage record, and the settings."""

from __future__ import annotations

import time

import pytest
from dagster import DagsterEventType

from dpe_dagster.config import ConfigError
from dpe_dagster.kube.pod_spec import pod_placement
from dpe_dagster.pools import PoolError, open_pool
from dpe_dagster.pools.clusterapi.pool import DELETE_MACHINE_ANNOTATION, ClusterApiPool
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.usage.eventlog import read_node_lifetimes
from tests.reliability.harness import advance, queue_run
from tests.support.aws import dagster  # noqa: F401  (fixtures)
from tests.support.cluster import cluster, kube, wait_for  # noqa: F401  (fixtures)
from tests.support.cluster_api import capi, deploy, environment  # noqa: F401  (fixtures)

TAINT = {"key": "dpe.io/pool", "value": "spot-etl", "effect": "NoSchedule"}


def tick(dagster, env, pool, memory):
    return scale_pool(dagster, env.pool("spot-etl"), pool, read_demand(dagster, env).of("spot-etl"), memory,
                      time.time())


def start_run_pod(kube, config, run_id: str) -> None:
    """The run's pod as the k8s run launcher makes it: the pool's selector, tolerations and requests;
    no node named, the scheduler places it."""
    placement = pod_placement(config, 1, 2)
    kube.apply([{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "dagster-run-1", "namespace": "default"},
                 "spec": {"backoffLimit": 0, "template": {
                     "metadata": {"labels": {**placement.labels, "dagster/run-id": run_id},
                                  "annotations": placement.annotations},
                     "spec": {**placement.pod_spec(), "restartPolicy": "Never", "containers": [{
                         "name": "run", "image": "dagster-run", "resources": {"requests": placement.requests}}]}}}}])


def test_a_queued_run_grows_the_deployment_lands_on_the_new_node_and_the_idle_node_goes_recorded_once(
        capi, kube, dagster):
    env = environment(capi.namespace, idle_timeout_s=1, taints=[TAINT])
    deploy(capi, env)
    config = env.pool("spot-etl")
    pool = open_pool(config, env)
    core = kube.core()

    run_id = queue_run(dagster, "spot-etl", cpus=1)
    result, memory = tick(dagster, env, pool, {})
    assert result.plan.target == 1 and capi.deployment()["spec"]["replicas"] == 1
    [machine] = wait_for("the Machine made", capi.machines_of)
    name = machine["metadata"]["name"]
    wait_for("the node running", lambda: [(n.id, n.state) for n in pool.nodes()] == [(name, "running")])
    [machine] = capi.machines_of()
    node = core.read_node(machine["status"]["nodeRef"]["name"])
    assert node.spec.provider_id == machine["spec"]["providerID"]
    assert node.metadata.labels["dpe.io/pool"] == "spot-etl"
    assert ("dpe.io/pool", "spot-etl", "NoSchedule") in [(t.key, t.value, t.effect) for t in node.spec.taints]

    start_run_pod(kube, config, run_id)
    [pod] = wait_for("the run's pod scheduled", lambda: [
        p for p in core.list_namespaced_pod("default", label_selector=f"dagster/run-id={run_id}").items
        if p.spec.node_name])
    assert pod.spec.node_name == node.metadata.name
    advance(dagster, run_id, DagsterEventType.RUN_START)
    wait_for("the node busy", lambda: [n.busy for n in pool.nodes()] == [True])
    assert pool.run_nodes() == {run_id: name}
    result, memory = tick(dagster, env, pool, memory)
    assert result.removed == [] and capi.deployment()["spec"]["replicas"] == 1

    # The run ends: its container exits (the kubelet reports the pod Succeeded), Dagster says so.
    core.patch_namespaced_pod_status(pod.metadata.name, "default", {"status": {"phase": "Succeeded"}})
    advance(dagster, run_id, DagsterEventType.RUN_SUCCESS)
    wait_for("the node idle", lambda: [n.busy for n in pool.nodes()] == [False])
    result, memory = tick(dagster, env, pool, memory)
    assert result.removed == [], "idle for 0s is not removed yet"
    # The stand-in controllers pause, so that what dpe asked of the MachineDeployment can be seen.
    capi.machines.stop()
    time.sleep(config.idle_timeout_s + 0.1)
    result, memory = tick(dagster, env, pool, memory)
    assert [(r.node_id, r.removed_because) for r in result.removed] == [(name, "idle")]
    assert capi.deployment()["spec"]["replicas"] == 0
    [marked] = capi.machines_of()
    assert marked["metadata"]["annotations"][DELETE_MACHINE_ANNOTATION] == "true"
    assert core.read_node(node.metadata.name).spec.unschedulable is True  # cordoned before it went

    capi.machines.sync()  # the MachineSet deletes the marked Machine, its Node goes with it
    assert capi.machines_of() == []
    assert node.metadata.name not in {n.metadata.name for n in core.list_node().items}
    result, memory = tick(dagster, env, pool, memory)
    assert result.removed == [] and pool.nodes() == []
    [lifetime] = read_node_lifetimes(dagster)
    assert (lifetime.node_id, lifetime.pool, lifetime.removed_because, lifetime.lifecycle) == (
        name, "spot-etl", "idle", "spot")
    assert lifetime.busy_seconds > 0 and lifetime.cost_usd > 0


def test_the_deployments_size_annotations_bound_the_target(capi, kube):
    from dpe_dagster.pools.clusterapi.pool import MAX_SIZE_ANNOTATION, MIN_SIZE_ANNOTATION

    env = environment(capi.namespace, max_size=10)
    deploy(capi, env, {MIN_SIZE_ANNOTATION: "1", MAX_SIZE_ANNOTATION: "2"})
    pool = open_pool(env.pool("spot-etl"), env)
    pool.set_target(6)
    assert pool.target() == 2
    capi.custom.patch_namespaced_custom_object(
        "cluster.x-k8s.io", "v1beta2", capi.namespace, "machinedeployments", "spot-etl-workers",
        {"metadata": {"annotations": {MAX_SIZE_ANNOTATION: "many"}}})
    pool.set_target(6)
    assert pool.target() == 6, "an annotation that is not a number is ignored: the pool's max_size bounds"


@pytest.mark.parametrize("settings, field", [
    ({}, "pools.spot-etl.settings.machine_deployment"),
    ({"machine_deployment": "Workers"}, "pools.spot-etl.settings.machine_deployment"),
    ({"machine_deployment": "w", "namespace": "a.b"}, "pools.spot-etl.settings.namespace"),
    ({"machine_deployment": "w", "group_name": "g"}, "pools.spot-etl.settings: unknown field"),
])
def test_bad_pool_settings_name_the_field(settings, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        environment("default", settings=settings)
    pool = environment("default").pool("spot-etl").model_copy(update={"settings": settings})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ClusterApiPool.from_config(pool)


def test_a_missing_machine_deployment_is_a_clear_error(capi, kube):
    env = environment(capi.namespace)
    with pytest.raises(PoolError, match=rf"pools\.spot-etl\.settings\.machine_deployment: MachineDeployment "
                                        rf"{capi.namespace}/spot-etl-workers does not exist"):
        open_pool(env.pool("spot-etl"), env).target()
