"""A container asset's room, asked for through its run: the run records the ask (a run tag), the
control plane's demand counts it, and the autoscaler sensor, not the run, asks the provider.

Real parts: a Dagster instance, eks-sim's pools in the AWS emulator, the autoscaler sensor, the
container's pod through dagster-k8s's `PipesK8sClient` with the run pod's own ServiceAccount to the
session's Kubernetes control plane, where the pool's instances join as nodes and the stand-in kubelet
runs the pod's command (tests/support/pods.py)."""

from __future__ import annotations

import uuid

from dagster import DagsterRunStatus, build_sensor_context
from dagster._core.storage.dagster_run import DagsterRun

from assets.containers import word_count
from dpe_dagster.containers import KubernetesPoolContainers
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from dpe_dagster.tags import CONTAINER_TAG_PREFIX, container_ask_tag
from resources import repository_environment
from tests.support.cluster import wait_for
from tests.support.pods import (  # noqa: F401 (fixtures and helpers)
    RUN_USER, admissions, cluster, eks_sim, instance, kube, pool_of_node, pools, run_pod, scheduling_events,
)


def started_run(instance, tags: dict[str, str]) -> str:
    return instance.add_run(DagsterRun(job_name="tpch", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                       tags=tags)).run_id


def test_a_container_ask_recorded_on_a_run_is_demand_on_its_pool_until_it_is_closed(sqlite_instance):
    env, instance = repository_environment("eks-sim"), sqlite_instance
    run_id = started_run(instance, container_ask_tag("container-1", "spot-etl", 0.5, 0.5))  # the run names no pool
    [ask] = read_demand(instance, env).of("spot-etl")
    assert (ask.run_id, ask.cpus, ask.memory_gb) == (f"{run_id}/container-1", 0.5, 0.5)
    assert read_demand(instance, env).of("ondemand-etl") == []

    instance.add_run_tags(run_id, {CONTAINER_TAG_PREFIX + "container-1": ""})  # the container ended
    assert read_demand(instance, env).of("spot-etl") == []


def test_a_malformed_container_ask_is_rejected_naming_the_tag(sqlite_instance):
    env, instance = repository_environment("eks-sim"), sqlite_instance
    run_id = started_run(instance, {CONTAINER_TAG_PREFIX + "c": "spot-etl lots"})
    demand = read_demand(instance, env)
    assert demand.of("spot-etl") == []
    assert demand.rejected[run_id] == ("tag dpe/container/c: must be '<pool> <cpus> <memory GB>' with positive "
                                       "numbers, or empty; got 'spot-etl lots'")


def containers(run_pod, node_wait_s: float) -> KubernetesPoolContainers:
    return KubernetesPoolContainers(environment="eks-sim", namespace="dagster", load_incluster_config=False,
                                    kubeconfig_file=str(run_pod.kubeconfig), poll_interval_s=0.1, node_wait_s=node_wait_s)


def test_the_run_asks_through_its_tag_and_the_autoscaler_sizes_the_pool(eks_sim, pools, admissions, run_pod,
                                                                        instance, kube):
    env, _ = eks_sim
    spot = pools["spot-etl"]
    sensor = build_autoscaler_sensor(env)  # the control plane's (this process's KUBECONFIG: its account)
    seen = {}

    def tick_when_the_pod_arrives(pod):  # the API server holds the creation: nobody has asked AWS yet; a tick does
        seen["target_at_create"] = spot.target()
        seen["demand"] = [(d.cpus, d.memory_gb) for d in read_demand(instance, env).of("spot-etl")]
        sensor(build_sensor_context(instance=instance))
        seen["target_after_tick"] = spot.target()

    admissions.on_create = tick_when_the_pod_arrives
    resource = containers(run_pod, node_wait_s=30)
    assert resource.ask_provider is False  # the default: the run pod needs no cloud credentials
    result = run_pod.materialize([word_count], resources={"containers": resource}, instance=instance)

    assert result.success
    assert seen == {"target_at_create": 0, "demand": [(0.5, 0.5)], "target_after_tick": 1}
    tags = instance.get_run_by_id(result.run_id).tags
    assert [value for key, value in tags.items() if key.startswith(CONTAINER_TAG_PREFIX)] == [""]  # closed
    assert read_demand(instance, env).of("spot-etl") == []

    # The node the tick asked for joined, the scheduler put the pod there, it ran and the run deleted it.
    [pod] = admissions.created
    name = pod["metadata"]["name"]
    assert admissions.deleted_by(RUN_USER) == [name]
    ended = admissions.last_seen(name)
    assert ended["status"]["phase"] == "Succeeded"
    pool, instance_id = pool_of_node(kube.core(), ended["spec"]["nodeName"])
    assert pool == "spot-etl" and [n.id for n in spot.nodes()] == [instance_id]
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("word_count")[0].metadata.items()}
    assert metadata["words"] == 18 and metadata["dpe/pod"] == name


def test_a_container_whose_node_does_not_come_fails_saying_the_autoscaler_was_asked(pools, admissions, run_pod,
                                                                                    instance, kube):
    result = run_pod.materialize([word_count], resources={"containers": containers(run_pod, node_wait_s=0.5)},
                         instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "found no node of pool spot-etl within 0.5s" in message
    assert "the container's ask is on its run and the autoscaler sizes pool spot-etl for it" in message
    assert pools["spot-etl"].target() == 0  # the run never asked AWS
    tags = instance.get_run_by_id(result.run_id).tags
    assert [value for key, value in tags.items() if key.startswith(CONTAINER_TAG_PREFIX)] == [""]

    # The scheduler had no node of the pool for it; the run deleted it, never bound.
    [pod] = admissions.created
    name = pod["metadata"]["name"]
    assert admissions.deleted_by(RUN_USER) == [name]
    last = admissions.last_seen(name)
    assert not last["spec"].get("nodeName") and last["status"]["phase"] == "Pending"
    events = wait_for("the scheduler's verdict on the pod", lambda: scheduling_events(kube.core(), name))
    assert [reason for reason, _ in events] == ["FailedScheduling"], events
