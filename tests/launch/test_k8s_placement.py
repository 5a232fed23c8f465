"""`placement: ending-together` in production: the k8s run launcher chooses the node a run's pod
should go to and hands it to the Kubernetes scheduler as a preferred node affinity.

As in test_k8s_launcher: aws-sim's pools in the AWS emulator, the Job built by dagster-k8s and
sent by the real kubernetes client to the loopback Kubernetes-format API, then checked with
kubernetes-validate.
"""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
from dagster import DagsterInstance
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job

import resources.aws_sim
from dpe_dagster.launch.k8s import pool_container_context
from dpe_dagster.kube.pod_spec import HOSTNAME_LABEL
from dpe_dagster.pools import open_pool
from dpe_dagster.tags import CPU_TAG, MEMORY_TAG, POOL_TAG
from tests.fakes.kube_api import K8S_VERSION
from tests.support.k8s_runs import IMAGE, instance, kube_api, launch, make_run, sim  # noqa: F401 (fixtures)

POOL = "spot-etl"


@pytest.fixture
def ending_together(monkeypatch):
    """aws-sim, with its spot pool placing runs ending-together (the launcher reads the
    environment at every launch)."""
    shipped = resources.aws_sim.environment

    def environment():
        env = shipped()
        env["pools"][POOL]["placement"] = "ending-together"
        return env

    monkeypatch.setattr(resources.aws_sim, "environment", environment)


@pytest.fixture
def two_nodes(sim, instance, kube_api):
    """The spot pool at two running instances, each joined to the cluster as a node of the pool."""
    env, _ = sim
    spot = open_pool(env.pool(POOL), env)
    spot.set_target(2)
    nodes = sorted(spot.nodes(), key=lambda n: (n.launched_at, n.id))  # oldest first
    assert [n.state for n in nodes] == ["running", "running"]
    names = {}
    for i, node in enumerate(nodes):
        names[node.id] = f"ip-10-0-3-{i}.ec2.internal"
        kube_api.add_node(names[node.id], node.id, labels={"dpe.io/pool": POOL})
    kube_api.add_node("ip-10-0-9-9.ec2.internal", "i-0000000000000ffff", labels={"dpe.io/pool": "other"})
    return [n.id for n in nodes], names


def preferred_hosts(job: dict) -> list[list[str]]:
    affinity = job["spec"]["template"]["spec"].get("affinity") or {}
    terms = affinity.get("nodeAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
    return [[value for expression in term["preference"]["matchExpressions"] if expression["key"] == HOSTNAME_LABEL
             for value in expression["values"]] for term in terms if term["weight"] == 100]


def messages(instance: DagsterInstance, run_id: str) -> list[str]:
    return [e.message or "" for e in instance.all_logs(run_id)]


def test_an_ending_together_pool_gives_the_run_pod_a_preferred_node_of_the_pool(
        ending_together, instance, kube_api, two_nodes):
    (oldest, _), names = two_nodes
    run = make_run(instance, {POOL_TAG: POOL, CPU_TAG: "1", MEMORY_TAG: "2g"})
    launch(instance, run)

    job = kube_api.jobs[-1]
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    # No run holds a node yet: every node would end with this run alike, so the oldest takes it.
    assert preferred_hosts(job) == [[names[oldest]]]
    spec = job["spec"]["template"]["spec"]
    # Preferred, not required: the pool's selector alone decides where the pod may go.
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in spec["affinity"]["nodeAffinity"]
    assert spec["nodeSelector"] == {"dpe.io/pool": POOL}
    assert any(f"prefers node {names[oldest]} ({oldest})" in m for m in messages(instance, run.run_id))
    # Node names came from the pool's nodes only (its label selector), not the whole cluster.
    assert any(path.startswith("/api/v1/nodes?labelSelector=dpe.io") for method, path in kube_api.requests
               if method == "GET")


def test_a_first_fit_pool_leaves_the_node_to_the_scheduler(instance, kube_api, two_nodes):
    run = make_run(instance, {POOL_TAG: POOL, CPU_TAG: "1", MEMORY_TAG: "2g"})
    launch(instance, run)
    job = kube_api.jobs[-1]
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert "affinity" not in job["spec"]["template"]["spec"]
    assert not any(method == "GET" and path.startswith("/api/v1/nodes") for method, path in kube_api.requests)


def test_a_node_not_yet_joined_to_the_cluster_is_not_preferred(ending_together, sim, instance, kube_api):
    env, _ = sim
    run = make_run(instance, {POOL_TAG: POOL, CPU_TAG: "2", MEMORY_TAG: "6g"})
    launch(instance, run)  # the pool is empty: its first instance is asked for now, and has no Node yet
    assert open_pool(env.pool(POOL), env).target() == 1
    job = kube_api.jobs[-1]
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert "affinity" not in job["spec"]["template"]["spec"]
    assert any("which Kubernetes does not list (yet); launching without a preferred node" in m
               for m in messages(instance, run.run_id))


def test_a_run_no_running_node_has_room_for_gets_no_preference(ending_together, instance, kube_api, two_nodes):
    run = make_run(instance, {POOL_TAG: POOL, CPU_TAG: "4", MEMORY_TAG: "6g"})  # the nodes have 2 CPUs
    launch(instance, run)
    job = kube_api.jobs[-1]
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert "affinity" not in job["spec"]["template"]["spec"]
    assert any("no running node of pool spot-etl has room for this run" in m for m in messages(instance, run.run_id))


def test_when_the_nodes_cannot_be_read_the_run_is_launched_without_a_preference(
        ending_together, instance, kube_api, two_nodes):
    base = kube_api.server.RequestHandlerClass

    class NodeListFails(base):
        def do_GET(self):
            if self.path.startswith("/api/v1/nodes"):
                return self._send(500, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                        "message": "etcdserver: request timed out", "reason": "InternalError",
                                        "code": 500})
            return super().do_GET()

    kube_api.server.RequestHandlerClass = NodeListFails
    run = make_run(instance, {POOL_TAG: POOL, CPU_TAG: "1", MEMORY_TAG: "2g"})
    launch(instance, run)

    job = kube_api.jobs[-1]
    assert job["metadata"]["name"] == f"dagster-run-{run.run_id}"
    assert "affinity" not in job["spec"]["template"]["spec"]
    assert any("could not be read" in m and "launching without a preferred node" in m and "500" in m
               for m in messages(instance, run.run_id))


def test_with_a_driver_pool_the_run_pod_gets_no_node_of_the_tagged_pool(ending_together, sim, instance, kube_api,
                                                                        two_nodes, monkeypatch):
    """The run pod is a Spark driver on the driver pool; the tagged pool holds its executors,
    which this launcher does not place."""
    shipped = resources.aws_sim.environment
    monkeypatch.setattr(resources.aws_sim, "environment", lambda: {**shipped(), "driver_pool": "ondemand-etl"})
    run = make_run(instance, {POOL_TAG: POOL, CPU_TAG: "1", MEMORY_TAG: "2g"})
    launch(instance, run)
    job = kube_api.jobs[-1]
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"dpe.io/pool": "ondemand-etl"}
    assert "affinity" not in job["spec"]["template"]["spec"]


def test_the_preferred_node_survives_dagster_k8s_job_construction_and_a_users_own_affinity(sim):
    """The Job as dagster-k8s builds it from our layer merged over a user's `dagster-k8s/config`
    that already prefers a zone: both preferences stay, the manifest validates."""
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    env, _ = sim
    zone = {"weight": 10, "preference": {"matchExpressions": [
        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1a"]}]}}
    user = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
        {"pod_spec_config": {"affinity": {"node_affinity": {"preferred_during_scheduling_ignored_during_execution": [
            zone]}}}}))
    run = DagsterRun(job_name="tpch", run_id="0f3a", tags={POOL_TAG: POOL, CPU_TAG: "1"})
    ours = pool_container_context(run, env, preferred_node_name="ip-10-0-3-1.ec2.internal")
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image=IMAGE, dagster_home="/opt/dagster/dagster_home"), ["dagster", "api"],
        "dagster-run-0f3a", user_defined_k8s_config=user.merge(ours).run_k8s_config)
    from kubernetes.client import ApiClient

    manifest = json.loads(json.dumps(ApiClient().sanitize_for_serialization(job)))
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    preferred = manifest["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert zone in preferred
    assert preferred_hosts(manifest) == [["ip-10-0-3-1.ec2.internal"]]

    driver = pool_container_context(run, env.model_copy(update={"driver_pool": "ondemand-etl"}),
                                    preferred_node_name="ip-10-0-3-1.ec2.internal")
    assert "affinity" not in driver.run_k8s_config.pod_spec_config
