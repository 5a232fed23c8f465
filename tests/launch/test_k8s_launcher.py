"""The k8s run launcher on the real control plane: a run tagged with a pool gets capacity at once and
a Job (built by dagster-k8s) that the API server admits; a node joins as the emulator launches the
instance, and the scheduler binds the run's pod to that pool's node."""

from __future__ import annotations

from dagster import DagsterRunStatus

from dpe_dagster.config import parse_environment
from dpe_dagster.kube.pod_spec import NOT_SAFE_TO_EVICT, pod_placement, run_k8s_config
from dpe_dagster.pools import open_pool
from dpe_dagster.tags import CPU_TAG, MEMORY_TAG, POOL_TAG, REQUESTED_POOL_TAG
from tests.support.cluster import wait_for
from tests.support.k8s_runs import IMAGE, cluster, eks_sim, instance, jobs, kube, launch, make_run  # noqa: F401


def run_pod(kube, run_id: str):
    """The run's pod once the scheduler bound it, and its node."""
    core = kube.core()

    def bound():
        pods = core.list_namespaced_pod("dagster", label_selector=f"dagster/run-id={run_id}").items
        return pods[0] if pods and pods[0].spec.node_name else None

    pod = wait_for(f"run {run_id}'s pod bound to a node", bound, timeout_s=60)
    return pod, core.read_node(pod.spec.node_name)


def test_launch_asks_the_pool_for_capacity_and_the_scheduler_puts_the_pod_on_it(eks_sim, instance, kube):
    env, _ = eks_sim
    spot = open_pool(env.pool("spot-etl"), env)
    assert spot.target() == 0
    run = make_run(instance, {POOL_TAG: "spot-etl", CPU_TAG: "2", MEMORY_TAG: "6g"})
    launch(instance, run)

    # Capacity was asked for at launch, not at the sensor's next tick.
    assert spot.target() == 1
    assert any("scale up 0 -> 1" in e.message for e in instance.all_logs(run.run_id))

    [job] = jobs(kube)
    assert job["metadata"]["name"] == f"dagster-run-{run.run_id}"
    template = job["spec"]["template"]
    spec = template["spec"]
    assert spec["nodeSelector"] == {"dpe.io/pool": "spot-etl"}
    assert {"key": "dpe.io/pool", "operator": "Equal", "value": "spot-etl", "effect": "NoSchedule"} in spec["tolerations"]
    for key, value in NOT_SAFE_TO_EVICT.items():
        assert template["metadata"]["annotations"][key] == value
    container = spec["containers"][0]
    assert container["image"] == IMAGE and "execute_run" in " ".join(container["args"])
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "6Gi"}
    assert spec["serviceAccountName"] == "dpe-run"  # the run pod's own, not the control plane's

    # The instance joined as a node of the pool; the scheduler bound the run's pod there.
    pod, node = run_pod(kube, run.run_id)
    [instance_id] = [n.id for n in spot.nodes()]
    assert node.spec.provider_id.endswith(f"/{instance_id}")
    assert node.metadata.labels["dpe.io/pool"] == "spot-etl" and node.metadata.labels["dpe.io/lifecycle"] == "spot"
    wait_for("the pool seeing its node busy", lambda: [n.busy for n in spot.nodes()] == [True])


def test_a_backed_off_spot_pool_sends_the_run_and_its_pod_to_the_fallback_pool(eks_sim, instance, kube):
    env, _ = eks_sim
    spot = open_pool(env.pool("spot-etl"), env)
    spot.back_off("test: no spot capacity for m6i.xlarge in us-east-1a")
    run = make_run(instance, {POOL_TAG: "spot-etl"})
    launch(instance, run)

    placed = instance.get_run_by_id(run.run_id)
    assert placed.tags[POOL_TAG] == "ondemand-etl" and placed.tags[REQUESTED_POOL_TAG] == "spot-etl"
    assert open_pool(env.pool("ondemand-etl"), env).target() == 1 and spot.target() == 0
    assert any("no spot capacity" in e.message and "fallback pool ondemand-etl" in e.message
               for e in instance.all_logs(run.run_id))
    [job] = jobs(kube)
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"dpe.io/pool": "ondemand-etl"}
    _, node = run_pod(kube, run.run_id)
    assert node.metadata.labels["dpe.io/pool"] == "ondemand-etl"
    assert node.metadata.labels["dpe.io/lifecycle"] == "on-demand"


def test_a_run_naming_an_unknown_pool_fails_with_the_allowed_pools_and_creates_no_job(instance, kube):
    run = make_run(instance, {POOL_TAG: "gpu-xl"})
    launch(instance, run)
    assert jobs(kube) == []
    failed = instance.get_run_by_id(run.run_id)
    assert failed.status == DagsterRunStatus.FAILURE
    assert any("'gpu-xl' is not a node pool" in (e.message or "") and "spot-etl" in (e.message or "")
               for e in instance.all_logs(run.run_id))


def test_a_run_larger_than_what_a_node_has_for_runs_fails_at_launch_and_creates_no_job(eks_sim, instance, kube):
    """On Kubernetes a pod runs on one node: a run pod asking for more than a node has for runs
    would stay Pending forever; it is refused with the figures instead."""
    env, _ = eks_sim
    run = make_run(instance, {POOL_TAG: "spot-etl", CPU_TAG: "4"})
    launch(instance, run)
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    assert jobs(kube) == [] and open_pool(env.pool("spot-etl"), env).target() == 0
    message = " ".join(e.message or "" for e in instance.all_logs(run.run_id))
    assert "dpe/cpu" in message and "3.795" in message, message


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
