"""Containers as pods on a pool: capacity first, the pool's settings in a valid pod, a real Pipes
round trip through the pod's log, and a clear failure (not a hang) when the pool cannot grow.

The pods go through dagster-k8s's `PipesK8sClient` and the real kubernetes client to the loopback
Kubernetes-format API (`tests/fakes/kube_api.py`); the pools are aws-sim's, in the AWS emulator.
"""

from __future__ import annotations

import time
import uuid

import kubernetes_validate
from dagster import DagsterRunStatus, materialize
from dagster._core.storage.dagster_run import DagsterRun

import dpe_dagster.environment
from assets.containers import word_count
from dpe_dagster.containers import KubernetesPoolContainers
from dpe_dagster.kube.pod_spec import NOT_SAFE_TO_EVICT
from dpe_dagster.tags import pool_tags
from dpe_dagster.usage.pods import read_pod_usage
from tests.fakes.kube_api import K8S_VERSION
from tests.support.pods import instance, kube_api, pools, sim  # noqa: F401  (fixtures and helpers)


def containers(kube_api, tmp_path, node_wait_s: float = 20) -> KubernetesPoolContainers:
    return KubernetesPoolContainers(environment="aws-sim", namespace="dagster", load_incluster_config=False,
                                    kubeconfig_file=str(kube_api.kubeconfig(tmp_path / "kubeconfig")),
                                    poll_interval_s=0.05, node_wait_s=node_wait_s, ask_provider=True)


def test_capacity_first_then_a_valid_pod_on_the_pool_and_pipes_metadata_back(pools, kube_api, instance, tmp_path):
    spot = pools["spot-etl"]
    targets_at_create = []

    def kubelet(pod):  # the pool's target when the pod reaches the API, then a node takes it
        targets_at_create.append(spot.target())
        kube_api.bind_later(pod["metadata"]["name"], 0.2)

    kube_api.on_create = kubelet
    result = materialize([word_count], resources={"containers": containers(kube_api, tmp_path)}, instance=instance)
    assert result.success

    # Capacity was asked for before the pod existed: the target was already raised.
    assert targets_at_create == [1]
    pod = kube_api.created[0]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", **pod}, K8S_VERSION, strict=True)
    spec, meta = pod["spec"], pod["metadata"]
    assert spec["nodeSelector"] == {"dpe.io/pool": "spot-etl"}
    assert {"key": "dpe.io/pool", "operator": "Equal", "value": "spot-etl", "effect": "NoSchedule"} in spec["tolerations"]
    for key, value in NOT_SAFE_TO_EVICT.items():
        assert meta["annotations"][key] == value
    assert meta["labels"]["dpe.io/pool"] == "spot-etl" and meta["annotations"]["dpe.io/asset"] == "word_count"
    container = spec["containers"][0]
    assert container["image"] == "python:3.11-slim" and spec["restartPolicy"] == "Never"
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}}
    assert {e["name"] for e in container["env"]} >= {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"}
    assert kube_api.deleted == [meta["name"]]

    # What the program in the container reported came back through the pod's log.
    materialization = result.asset_materializations_for_node("word_count")[0]
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["words"] == 18 and metadata["dpe/pool"] == "spot-etl" and metadata["dpe/pod"] == meta["name"]
    assert "dpe/cost_usd" in metadata
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("has_words", True)]

    # Its time is in the ledger, attributed to the asset, once.
    [usage] = read_pod_usage(instance)
    assert usage.pool == "spot-etl" and usage.assets == ("word_count",) and usage.status == "SUCCESS"
    assert usage.run_id == f"{result.run_id}/{meta['name']}" and usage.cpus == 0.5 and usage.node_share == 0.25
    assert usage.started_at <= usage.ended_at


def test_a_pool_that_cannot_grow_fails_clearly_within_the_wait_and_deletes_the_pod(sim, pools, kube_api, instance,
                                                                                  tmp_path, monkeypatch):
    env, _ = sim
    one_node = env.pools["spot-etl"].model_copy(update={"max_size": 1})
    full = env.model_copy(update={"pools": {**env.pools, "spot-etl": one_node}})
    monkeypatch.setattr(dpe_dagster.environment, "load_environment", lambda source=None, name=None, root=None: full)
    # A run already needs the pool's only node (2 CPUs): the container's half CPU would need a second.
    instance.add_run(DagsterRun(job_name="tpch", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                tags=pool_tags("spot-etl", cpus=2)))
    began = time.monotonic()
    result = materialize([word_count], resources={"containers": containers(kube_api, tmp_path, node_wait_s=1.0)},
                         instance=instance, raise_on_error=False)
    elapsed = time.monotonic() - began
    assert not result.success and elapsed < 15
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "found no node of pool spot-etl within 1s" in message and "capped at max_size 1" in message
    assert len(kube_api.created) == 1 and kube_api.deleted == [kube_api.created[0]["metadata"]["name"]]
    assert read_pod_usage(instance) == []  # it never held a node: nothing charged


def test_when_no_pool_of_the_chain_can_be_asked_no_pod_is_created(pools, kube_api, instance, tmp_path):
    for pool in pools.values():
        pool.back_off("test: InsufficientInstanceCapacity")
    result = materialize([word_count], resources={"containers": containers(kube_api, tmp_path)}, instance=instance,
                         raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "no pool of spot-etl, ondemand-etl can take this container now" in message
    assert "InsufficientInstanceCapacity" in message
    assert kube_api.created == []
