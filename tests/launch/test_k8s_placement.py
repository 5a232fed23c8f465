"""`placement: ending-together` in production: the k8s run launcher chooses the node a run's pod
should go to and hands it to the Kubernetes scheduler as a preferred node affinity.

On the real control plane through eks-sim (tests/support/k8s_runs.py): the pools are Auto Scaling
groups in the AWS emulator, their instances join the cluster as EKS nodes, the launcher acts as
the control plane's ServiceAccount, the API server admits the Job dagster-k8s builds and the
scheduler binds its pod, which is where the preference is seen to work.
"""

from __future__ import annotations

import json

import pytest
from dagster import DagsterInstance
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job

import resources.eks_sim
from dpe_dagster.kube.pod_spec import HOSTNAME_LABEL
from dpe_dagster.launch.k8s import pool_container_context
from dpe_dagster.pools import open_pool
from dpe_dagster.tags import CPU_TAG, MEMORY_TAG, POOL_TAG
from tests.support.cluster import wait_for
from tests.support.k8s_runs import IMAGE, cluster, eks_sim, instance, jobs, kube, launch, make_run  # noqa: F401

POOL = "spot-etl"
NAMESPACE = "dagster"
TOLERATE_POOLS = [{"key": "dpe.io/pool", "operator": "Exists"}]


@pytest.fixture
def ending_together(monkeypatch):
    """eks-sim, with its spot pool placing runs ending-together (the launcher reads the
    environment at every launch)."""
    shipped = resources.eks_sim.environment

    def environment():
        env = shipped()
        env["pools"][POOL]["placement"] = "ending-together"
        return env

    monkeypatch.setattr(resources.eks_sim, "environment", environment)


def joined_nodes(eks_sim, kube, count: int) -> list[tuple[str, str]]:
    """The spot pool grown to `count` running instances, each joined to the cluster as a node of
    the pool: [(instance id, node name)], oldest first (as the launcher orders them)."""
    env, sandbox = eks_sim
    spot = open_pool(env.pool(POOL), env)
    spot.set_target(count)

    def running():
        found = sorted(spot.nodes(), key=lambda n: (n.launched_at, n.id))
        return found if [n.state for n in found] == ["running"] * count else None

    joined = [(node.id, sandbox.nodes.node_name(node.id)) for node in wait_for(f"{count} running spot nodes", running)]
    for _, name in joined:
        assert kube.core().read_node(name).metadata.labels["dpe.io/pool"] == POOL
    return joined


@pytest.fixture
def two_nodes(eks_sim, instance, kube):
    """Two running nodes of the spot pool, and one of the other pool (which the spot pool's
    selector leaves out)."""
    env, _ = eks_sim
    open_pool(env.pool("ondemand-etl"), env).set_target(1)
    joined = joined_nodes(eks_sim, kube, 2)
    wait_for("the on-demand node joined", lambda: any(
        n.metadata.labels.get("dpe.io/pool") == "ondemand-etl" for n in kube.core().list_node().items))
    return joined


@pytest.fixture
def oldest_partly_taken(kube, two_nodes):
    """A pod that is no run (someone's, 2 CPUs) sits on the oldest node: left to itself the
    scheduler would put a new pod on the other, emptier node, so a pod landing on the oldest is
    the preference's doing."""
    (_, oldest), (_, newest) = two_nodes
    core = kube.core()
    core.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "someones-pod"},
        "spec": {"nodeSelector": {HOSTNAME_LABEL: oldest}, "tolerations": TOLERATE_POOLS, "containers": [
            {"name": "main", "image": "busybox", "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}]}})
    wait_for("someone's pod running on the oldest node", lambda: (
        lambda pod: pod.spec.node_name == oldest and pod.status.phase == "Running")(
            core.read_namespaced_pod("someones-pod", "default")))
    return oldest, newest


@pytest.fixture
def launcher_requests(instance, monkeypatch):
    """What the launcher's own Kubernetes client sends (method, path, query), passed through to
    the API server unchanged."""
    rest = instance.run_launcher._api_client.core_api.api_client.rest_client
    sent: list[tuple[str, str, dict]] = []
    send = rest.request

    def request(method, url, *args, **kwargs):
        sent.append((method, url.split("://", 1)[-1].split("/", 1)[-1], dict(kwargs.get("query_params") or [])))
        return send(method, url, *args, **kwargs)

    monkeypatch.setattr(rest, "request", request)
    return sent


def node_reads(sent: list[tuple[str, str, dict]]) -> list[dict]:
    return [query for method, path, query in sent if method == "GET" and path.startswith("api/v1/nodes")]


def the_job(kube, run_id: str) -> dict:
    [job] = [job for job in jobs(kube) if job["metadata"]["name"] == f"dagster-run-{run_id}"]
    return job


def bound_node(kube, job_name: str, timeout_s: float = 60) -> str:
    """The node the scheduler bound the Job's pod to."""
    core = kube.core()

    def bound():
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={job_name}").items
        return pods[0].spec.node_name if pods and pods[0].spec.node_name else None

    return wait_for(f"{job_name}'s pod bound to a node", bound, timeout_s=timeout_s)


def preferred_hosts(job: dict) -> list[list[str]]:
    affinity = job["spec"]["template"]["spec"].get("affinity") or {}
    terms = affinity.get("nodeAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
    return [[value for expression in term["preference"]["matchExpressions"] if expression["key"] == HOSTNAME_LABEL
             for value in expression["values"]] for term in terms if term["weight"] == 100]


def messages(instance: DagsterInstance, run_id: str) -> list[str]:
    return [e.message or "" for e in instance.all_logs(run_id)]


def test_an_ending_together_pool_gives_the_run_pod_a_preferred_node_of_the_pool_and_the_pod_lands_there(
        ending_together, instance, kube, two_nodes, oldest_partly_taken, launcher_requests):
    (oldest_id, oldest), _ = two_nodes
    run = make_run(instance, {POOL_TAG: POOL, CPU_TAG: "1", MEMORY_TAG: "2g"})
    launch(instance, run)

    job = the_job(kube, run.run_id)
    # No run holds a node yet: every node would end with this run alike, so the oldest takes it
    # (someone's pod is no run: it takes no room in dpe's view).
    assert preferred_hosts(job) == [[oldest]]
    spec = job["spec"]["template"]["spec"]
    # Preferred, not required: the pool's selector alone decides where the pod may go.
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in spec["affinity"]["nodeAffinity"]
    assert spec["nodeSelector"] == {"dpe.io/pool": POOL}
    assert any(f"prefers node {oldest} ({oldest_id})" in m for m in messages(instance, run.run_id))
    # The scheduler honoured it, over the emptier node it would otherwise choose.
    assert bound_node(kube, job["metadata"]["name"]) == oldest
    # Node names came from the pool's nodes only (its label selector), not the whole cluster.
    assert node_reads(launcher_requests) == [{"labelSelector": f"dpe.io/pool={POOL}"}]


def test_a_first_fit_pool_leaves_the_node_to_the_scheduler(instance, kube, two_nodes, oldest_partly_taken,
                                                           launcher_requests):
    _, newest = oldest_partly_taken
    run = make_run(instance, {POOL_TAG: POOL, CPU_TAG: "1", MEMORY_TAG: "2g"})
    launch(instance, run)
    job = the_job(kube, run.run_id)
    assert "affinity" not in job["spec"]["template"]["spec"]
    assert node_reads(launcher_requests) == []  # the launcher did not even read the nodes
    # The scheduler's own choice: the emptier node.
    assert bound_node(kube, job["metadata"]["name"]) == newest


def test_a_node_not_yet_joined_to_the_cluster_is_not_preferred(ending_together, eks_sim, instance, kube,
                                                               monkeypatch):
    """The pool's nodes are running once Kubernetes lists them Ready (busy_source kubernetes): an
    instance still booting is pending, so no node has room and the pod waits for the scheduler."""
    env, sandbox = eks_sim
    monkeypatch.setattr(sandbox.nodes, "boot_s", 3600.0)  # the instance is still booting: no Node yet
    run = make_run(instance, {POOL_TAG: POOL, CPU_TAG: "2", MEMORY_TAG: "6g"})
    launch(instance, run)  # the pool is empty: its first instance is asked for now
    spot = open_pool(env.pool(POOL), env)
    assert spot.target() == 1
    [booting] = spot.nodes()
    assert booting.state == "pending"
    job = the_job(kube, run.run_id)
    assert "affinity" not in job["spec"]["template"]["spec"]
    assert any("no running node of pool spot-etl has room for this run; the scheduler places it" in m
               for m in messages(instance, run.run_id)), messages(instance, run.run_id)
    wait_for("the run's pod reported unschedulable (no node of the pool yet)", lambda: any(
        c.type == "PodScheduled" and c.reason == "Unschedulable"
        for pod in kube.core().list_namespaced_pod(NAMESPACE, label_selector=f"job-name={job['metadata']['name']}").items
        for c in pod.status.conditions or []))
    # Once the instance has booted and joined, the scheduler puts the pod there.
    monkeypatch.setattr(sandbox.nodes, "boot_s", 0.5)
    assert bound_node(kube, job["metadata"]["name"]) == sandbox.nodes.node_name(booting.id)


def test_a_run_no_running_node_has_room_for_gets_no_preference(ending_together, eks_sim, instance, kube):
    """The pool's one node holds a run of 3 CPUs (of the 3.795 a node has for runs): a run of 2
    fits on no running node, so it is left to the scheduler, and lands on the node the pool grows
    for it. (Two runs: eks-sim's max_concurrent_runs.)"""
    env, _ = eks_sim
    [(node_id, node)] = joined_nodes(eks_sim, kube, 1)
    spot = open_pool(env.pool(POOL), env)
    holder = make_run(instance, {POOL_TAG: POOL, CPU_TAG: "3", MEMORY_TAG: "6g"})
    launch(instance, holder)
    job = the_job(kube, holder.run_id)
    assert preferred_hosts(job) == [[node]]
    assert bound_node(kube, job["metadata"]["name"]) == node
    # Where the pool sees the run (its view of the cluster's pods is shared for a moment).
    wait_for("the pool seeing the run on its node", lambda: spot.run_nodes().get(holder.run_id) == node_id)

    run = make_run(instance, {POOL_TAG: POOL, CPU_TAG: "2", MEMORY_TAG: "6g"})
    launch(instance, run)
    job = the_job(kube, run.run_id)
    assert open_pool(env.pool(POOL), env).target() == 2  # the launch asked for the node the run needs
    assert "affinity" not in job["spec"]["template"]["spec"], preferred_hosts(job)
    assert any("no running node of pool spot-etl has room for this run" in m for m in messages(instance, run.run_id))
    second = bound_node(kube, job["metadata"]["name"])
    assert second != node
    assert kube.core().read_node(second).metadata.labels["dpe.io/pool"] == POOL


@pytest.fixture
def launcher_without_node_rights(eks_sim, kube, monkeypatch):
    """The launcher acts as an account that may create Jobs (the chart's Role) but was never given
    deploy/k8s's node rights. Requested before `instance`, whose launcher it configures."""
    from kubernetes import client

    _, sandbox = eks_sim
    name = "launcher-without-nodes"
    kube.apply([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": name, "namespace": NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "dagster-role"},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]},
    ])
    kubeconfig = kube.kubeconfig_for(kube.dir / f"{name}.kubeconfig", NAMESPACE, name)
    monkeypatch.setitem(sandbox.instance["run_launcher"]["config"], "kubeconfig_file", str(kubeconfig))
    yield str(kubeconfig)
    client.RbacAuthorizationV1Api(kube.api_client()).delete_namespaced_role_binding(name, NAMESPACE)
    kube.core().delete_namespaced_service_account(name, NAMESPACE)


def test_when_the_nodes_cannot_be_read_the_run_is_launched_without_a_preference(
        ending_together, launcher_without_node_rights, instance, kube, two_nodes):
    assert instance.run_launcher.kubeconfig_file == launcher_without_node_rights
    run = make_run(instance, {POOL_TAG: POOL, CPU_TAG: "1", MEMORY_TAG: "2g"})
    launch(instance, run)

    job = the_job(kube, run.run_id)  # the Job is made all the same
    assert "affinity" not in job["spec"]["template"]["spec"]
    # The API server's refusal, in the run's event log.
    assert any("could not be read" in m and "launching without a preferred node" in m and "403" in m
               and "cannot list resource" in m and "launcher-without-nodes" in m
               for m in messages(instance, run.run_id)), messages(instance, run.run_id)
    assert bound_node(kube, job["metadata"]["name"]) in {name for _, name in two_nodes}


def test_with_a_driver_pool_the_run_pod_gets_no_node_of_the_tagged_pool(ending_together, eks_sim, instance, kube,
                                                                        two_nodes, monkeypatch):
    """The run pod is a Spark driver on the driver pool; the tagged pool holds its executors,
    which this launcher does not place."""
    shipped = resources.eks_sim.environment
    monkeypatch.setattr(resources.eks_sim, "environment", lambda: {**shipped(), "driver_pool": "ondemand-etl"})
    run = make_run(instance, {POOL_TAG: POOL, CPU_TAG: "1", MEMORY_TAG: "2g"})
    launch(instance, run)
    job = the_job(kube, run.run_id)
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"dpe.io/pool": "ondemand-etl"}
    assert "affinity" not in job["spec"]["template"]["spec"]
    node = bound_node(kube, job["metadata"]["name"])
    assert kube.core().read_node(node).metadata.labels["dpe.io/pool"] == "ondemand-etl"


def test_the_preferred_node_survives_dagster_k8s_job_construction_and_a_users_own_affinity(
        eks_sim, kube, two_nodes, oldest_partly_taken):
    """The Job as dagster-k8s builds it from our layer merged over a user's `dagster-k8s/config`
    that already prefers a zone: the API server admits it (strict field validation), both
    preferences stay, and the scheduler follows ours."""
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig
    from kubernetes import client

    env, _ = eks_sim
    oldest, _ = oldest_partly_taken
    zone = {"weight": 10, "preference": {"matchExpressions": [
        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1a"]}]}}
    user = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
        {"pod_spec_config": {"affinity": {"node_affinity": {"preferred_during_scheduling_ignored_during_execution": [
            zone]}}}}))
    run = DagsterRun(job_name="tpch", run_id="0f3a", tags={POOL_TAG: POOL, CPU_TAG: "1"})
    ours = pool_container_context(run, env, preferred_node_name=oldest)
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image=IMAGE, dagster_home="/opt/dagster/dagster_home"), ["dagster", "api"],
        "dagster-run-0f3a", user_defined_k8s_config=user.merge(ours).run_k8s_config)
    batch = client.BatchV1Api(kube.api_client())
    manifest = json.loads(json.dumps(batch.api_client.sanitize_for_serialization(job)))
    batch.create_namespaced_job(NAMESPACE, manifest, field_validation="Strict")

    [stored] = [j for j in jobs(kube) if j["metadata"]["name"] == "dagster-run-0f3a"]
    preferred = stored["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert zone in preferred
    assert preferred_hosts(stored) == [[oldest]]
    assert bound_node(kube, "dagster-run-0f3a") == oldest

    driver = pool_container_context(run, env.model_copy(update={"driver_pool": "ondemand-etl"}),
                                    preferred_node_name=oldest)
    assert "affinity" not in driver.run_k8s_config.pod_spec_config
