"""Containers as pods on a pool: capacity first, the pool's settings in a pod the API server admits,
the scheduler putting it on a node of the pool, a real Pipes round trip through the pod's log, and a
clear failure (not a hang) when the pool cannot grow.

Real parts: the pods go through dagster-k8s's `PipesK8sClient` and the kubernetes client, with the
run pod's own ServiceAccount (`dpe-run`), to the session's Kubernetes control plane; eks-sim's pools
are in the AWS emulator, their instances join as nodes and the stand-in kubelet runs the pod's
command as a local process (tests/support/pods.py, tests/cluster/).
"""

from __future__ import annotations

import time
import uuid

import pytest
from dagster import DagsterRunStatus
from dagster._core.storage.dagster_run import DagsterRun

import dpe_dagster.environment
from assets.containers import word_count
from dpe_dagster.containers import KubernetesPoolContainers
from dpe_dagster.kube.pod_spec import NOT_SAFE_TO_EVICT, pod_placement
from dpe_dagster.tags import pool_tags
from dpe_dagster.usage.eventlog import read_pod_usage
from tests.support.cluster import node_ready, wait_for
from tests.support.pods import (  # noqa: F401  (fixtures and helpers)
    RUN_USER, admissions, cluster, eks_sim, instance, kube, pool_of_node, pools, run_pod, scheduling_events,
)


@pytest.fixture(autouse=True)
def in_the_run_pod(instance, run_pod, monkeypatch):
    """This process is the run's pod: whatever it asks the API server (the container's pod, and here,
    as it asks the pool itself (`ask_provider`), the pool's nodes) it asks as the run's ServiceAccount."""
    monkeypatch.setenv("KUBECONFIG", str(run_pod.kubeconfig))


def containers(run_pod, node_wait_s: float = 30) -> KubernetesPoolContainers:
    return KubernetesPoolContainers(environment="eks-sim", namespace="dagster", load_incluster_config=False,
                                    kubeconfig_file=str(run_pod.kubeconfig), poll_interval_s=0.1,
                                    node_wait_s=node_wait_s, ask_provider=True)


def step_failure(result) -> str:
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return str(failure.event_specific_data.error)


def test_capacity_first_then_a_pod_on_a_node_of_the_pool_and_pipes_metadata_back(pools, admissions, run_pod,
                                                                                 instance, kube):
    spot = pools["spot-etl"]
    targets_at_create = []
    # The pool's target as the pod's creation reaches the API server (it waits for the answer).
    admissions.on_create = lambda pod: targets_at_create.append(spot.target())
    result = run_pod.materialize([word_count], resources={"containers": containers(run_pod)}, instance=instance)
    assert result.success

    # Capacity was asked for before the pod existed: the target was already raised.
    assert targets_at_create == [1]
    [pod] = admissions.created  # as the API server admitted it
    spec, meta = pod["spec"], pod["metadata"]
    assert spec["nodeSelector"] == {"dpe.io/pool": "spot-etl"}
    toleration = {"key": "dpe.io/pool", "operator": "Equal", "value": "spot-etl", "effect": "NoSchedule"}
    assert toleration in spec["tolerations"]
    for key, value in NOT_SAFE_TO_EVICT.items():
        assert meta["annotations"][key] == value
    assert meta["labels"]["dpe.io/pool"] == "spot-etl" and meta["annotations"]["dpe.io/asset"] == "word_count"
    container = spec["containers"][0]
    assert container["image"] == "python:3.11-slim" and spec["restartPolicy"] == "Never"
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}}
    assert {e["name"] for e in container["env"]} >= {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"}

    # The scheduler put it on the node that joined for the pool's new instance; it ran to the end
    # there, and the run (as its own ServiceAccount) deleted it.
    assert admissions.deleted_by(RUN_USER) == [meta["name"]]
    ended = admissions.last_seen(meta["name"])
    assert ended["status"]["phase"] == "Succeeded"
    assert ended["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    pool, instance_id = pool_of_node(kube.core(), ended["spec"]["nodeName"])
    assert pool == "spot-etl" and [n.id for n in spot.nodes()] == [instance_id]

    # What the program in the container reported came back through the pod's log.
    materialization = result.asset_materializations_for_node("word_count")[0]
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["words"] == 18 and metadata["dpe/pool"] == "spot-etl" and metadata["dpe/pod"] == meta["name"]
    assert metadata["dpe/cost_usd"] > 0
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("has_words", True)]

    # Its time is in the ledger, attributed to the asset, once: half a CPU of the 3.795 a node of
    # the pool has for runs.
    [usage] = read_pod_usage(instance)
    assert usage.pool == "spot-etl" and usage.assets == ("word_count",) and usage.status == "SUCCESS"
    assert usage.run_id == f"{result.run_id}/{meta['name']}" and usage.cpus == 0.5
    assert usage.node_share == pytest.approx(0.5 / 3.795)
    assert usage.started_at <= usage.ended_at


def test_a_pool_that_cannot_grow_fails_clearly_within_the_wait_and_deletes_the_pod(eks_sim, pools, admissions,
                                                                                  run_pod, instance, kube,
                                                                                  monkeypatch):
    env, _ = eks_sim
    one_node = env.pools["spot-etl"].model_copy(update={"max_size": 1})
    full = env.model_copy(update={"pools": {**env.pools, "spot-etl": one_node}})
    monkeypatch.setattr(dpe_dagster.environment, "load_environment", lambda source=None, name=None, root=None: full)
    core = kube.core()

    # A run holds 3.5 of the 3.795 CPUs the pool's only node has for runs: its pod runs there.
    spot = pools["spot-etl"]
    run = instance.add_run(DagsterRun(job_name="tpch", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                      tags=pool_tags("spot-etl", cpus=3.5)))
    spot.set_target(1)
    placement = pod_placement(one_node, 3.5, 2)
    meta = placement.metadata()
    meta["labels"]["dagster/run-id"] = run.run_id
    core.create_namespaced_pod("dagster", {
        "metadata": {"name": "holder", **meta},
        "spec": {**placement.pod_spec(), "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "run", "image": "dpe:eks-sim", "command": ["sleep", "300"],
                                 "resources": {"requests": dict(placement.requests)}}]}})
    holder = wait_for("the run's pod running on the pool's node",
                      lambda: (p := core.read_namespaced_pod("holder", "dagster")).status.phase == "Running" and p,
                      timeout_s=60)
    assert pool_of_node(core, holder.spec.node_name)[0] == "spot-etl" and node_ready(core, holder.spec.node_name)

    try:
        began = time.monotonic()
        result = run_pod.materialize([word_count], resources={"containers": containers(run_pod, node_wait_s=1.0)},
                             instance=instance, raise_on_error=False)
        elapsed = time.monotonic() - began
    finally:
        core.delete_namespaced_pod("holder", "dagster")
    assert not result.success and elapsed < 20
    message = step_failure(result)
    assert "found no node of pool spot-etl within 1s" in message and "capped at max_size 1" in message
    assert spot.target() == 1

    # The scheduler found no room for it on the pool's node; the run deleted it, never bound.
    [pod] = [p for p in admissions.created if p["metadata"]["name"] != "holder"]
    name = pod["metadata"]["name"]
    assert f"pod {name} found no node" in message
    assert admissions.deleted_by(RUN_USER) == [name]
    last = admissions.last_seen(name)
    assert not last["spec"].get("nodeName") and last["status"]["phase"] == "Pending"
    [scheduled] = [c for c in last["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
    events = wait_for("the scheduler's verdict on the pod", lambda: scheduling_events(core, name))
    assert any(reason == "FailedScheduling" and "1 Insufficient cpu" in text for reason, text in events), events
    assert read_pod_usage(instance) == []  # it never held a node: nothing charged
    wait_for("the holder's pod gone", lambda: [p.metadata.name for p in core.list_namespaced_pod("dagster").items]
             == [run_pod.pod_name])


def test_when_no_pool_of_the_chain_can_be_asked_no_pod_is_created(pools, admissions, run_pod, instance):
    for pool in pools.values():
        pool.back_off("test: InsufficientInstanceCapacity")
    result = run_pod.materialize([word_count], resources={"containers": containers(run_pod)}, instance=instance,
                         raise_on_error=False)
    assert not result.success
    message = step_failure(result)
    assert "no pool of spot-etl, ondemand-etl can take this container now" in message
    assert "InsufficientInstanceCapacity" in message
    assert admissions.created == []
    assert [pool.target() for pool in pools.values()] == [0, 0]
