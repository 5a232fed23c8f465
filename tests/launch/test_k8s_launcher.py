"""The k8s run launcher: a run tagged with a pool gets capacity at once and a Job (built by
dagster-k8s) that lands on that pool's nodes; the manifest passes kubernetes-validate.

The Job goes through the real kubernetes client to the loopback Kubernetes-format API of
test_k8s_nodes; the pools are aws-sim's, in the AWS emulator.
"""

from __future__ import annotations

import kubernetes_validate
from dagster import DagsterRunStatus

from dpe_dagster.config import parse_environment
from dpe_dagster.kube.pod_spec import NOT_SAFE_TO_EVICT, pod_placement, run_k8s_config
from dpe_dagster.pools import open_pool
from dpe_dagster.tags import CPU_TAG, MEMORY_TAG, POOL_TAG, REQUESTED_POOL_TAG
from tests.fakes.kube_api import K8S_VERSION
from tests.support.k8s_runs import IMAGE, instance, kube_api, launch, make_run, sim  # noqa: F401  (fixtures and helpers)


def test_launch_asks_the_pool_for_capacity_and_puts_the_job_on_it(sim, instance, kube_api):
    env, _ = sim
    spot = open_pool(env.pool("spot-etl"), env)
    assert spot.target() == 0
    run = make_run(instance, {POOL_TAG: "spot-etl", CPU_TAG: "2", MEMORY_TAG: "6g"})
    launch(instance, run)

    # Capacity was asked for at launch, not at the sensor's next tick.
    assert spot.target() == 1
    assert any("scale up 0 -> 1" in e.message for e in instance.all_logs(run.run_id))

    assert len(kube_api.jobs) == 1
    job = kube_api.jobs[0]
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert job["kind"] == "Job" and job["metadata"]["name"] == f"dagster-run-{run.run_id}"
    template = job["spec"]["template"]
    spec = template["spec"]
    assert spec["nodeSelector"] == {"dpe.io/pool": "spot-etl"}
    assert {"key": "dpe.io/pool", "operator": "Equal", "value": "spot-etl", "effect": "NoSchedule"} in spec["tolerations"]
    for key, value in NOT_SAFE_TO_EVICT.items():
        assert template["metadata"]["annotations"][key] == value
    assert template["metadata"]["labels"]["dpe.io/pool"] == "spot-etl"
    container = spec["containers"][0]
    assert container["image"] == IMAGE
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "6144Mi"}
    assert "execute_run" in " ".join(container["args"])
    assert spec["serviceAccountName"] == "dpe-run"  # the run pod's own, not the control plane's
    assert ("POST", "/apis/batch/v1/namespaces/dagster/jobs") in kube_api.requests


def test_a_backed_off_spot_pool_sends_the_run_and_its_job_to_the_fallback_pool(sim, instance, kube_api):
    env, _ = sim
    spot = open_pool(env.pool("spot-etl"), env)
    spot.back_off("test: no spot capacity for m6i.large in us-east-1a")
    run = make_run(instance, {POOL_TAG: "spot-etl"})
    launch(instance, run)

    placed = instance.get_run_by_id(run.run_id)
    assert placed.tags[POOL_TAG] == "ondemand-etl" and placed.tags[REQUESTED_POOL_TAG] == "spot-etl"
    assert open_pool(env.pool("ondemand-etl"), env).target() == 1 and spot.target() == 0
    assert any("no spot capacity" in e.message and "fallback pool ondemand-etl" in e.message
               for e in instance.all_logs(run.run_id))
    job = kube_api.jobs[-1]
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"dpe.io/pool": "ondemand-etl"}
    # The on-demand pool has no taint: the pod needs no toleration to land there.
    assert not job["spec"]["template"]["spec"].get("tolerations")


def test_a_run_naming_an_unknown_pool_fails_with_the_allowed_pools_and_creates_no_job(instance, kube_api):
    run = make_run(instance, {POOL_TAG: "gpu-xl"})
    launch(instance, run)
    assert kube_api.jobs == []
    failed = instance.get_run_by_id(run.run_id)
    assert failed.status == DagsterRunStatus.FAILURE
    assert any("'gpu-xl' is not a node pool" in (e.message or "") and "spot-etl" in (e.message or "")
               for e in instance.all_logs(run.run_id))


def test_run_k8s_config_is_dagster_k8s_user_config_and_merges_over_the_users():
    """The placement layer survives a user's own `dagster-k8s/config` tag (lists are added)."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    env = parse_environment("t", {"pools": {"p": {
        "provider": "local", "max_size": 2, "node_cpus": 4, "node_memory_gb": 16, "price_per_node_hour": 0.1,
        "labels": {"dpe.io/pool": "p"}, "taints": [{"key": "dedicated", "effect": "NoExecute"}]}}})
    user = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict({
        "pod_spec_config": {"tolerations": [{"key": "gpu", "operator": "Exists"}], "nodeSelector": {"disk": "ssd"}}}))
    ours = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
        run_k8s_config(pod_placement(env.pool("p"), 0.5, 1.5))))
    pod_spec = user.merge(ours).run_k8s_config.pod_spec_config
    assert pod_spec["node_selector"] == {"disk": "ssd", "dpe.io/pool": "p"}
    assert pod_spec["tolerations"] == [{"key": "gpu", "operator": "Exists"},
                                       {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]
    assert user.merge(ours).run_k8s_config.container_config["resources"]["requests"] == {"cpu": "500m",
                                                                                        "memory": "1536Mi"}
