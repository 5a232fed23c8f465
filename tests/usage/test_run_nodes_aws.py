"""Which node each run holds on an aws_asg pool: from Kubernetes (the run's pod and its executor
pods, by their `dagster/run-id` label, on the real control plane of tests/cluster/, the AWS
emulator's instances joined as EKS nodes), and in aws-sim from the emulator's own model (moto on
loopback, real run storage)."""

from __future__ import annotations


import pytest
from dagster import DagsterEventType

from dpe_dagster.kube.nodes import KubeNodes
from dpe_dagster.pools import open_pool
from dpe_dagster.pools.aws.asg import node_instance_id
from dpe_dagster.pools.aws.emulator import create_groups
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.spark.kubernetes import executor_run_labels
from dpe_dagster.tags import RUN_ID_LABEL
from tests.reliability.harness import advance, queue_run
from tests.support.aws import aws, clients, dagster, environment, kube_pool, moto  # noqa: F401  (fixtures and helpers)
from tests.support.cluster import cluster, eks, kube, node_ready, pods_on, wait_for  # noqa: F401  (fixtures)

RUN_A = "0f3a9c2e-1b2d-4e5f-8a9b-0c1d2e3f4a5b"
RUN_B = "7c1e5d4a-9b8f-4a3e-b2c1-d0e9f8a7b6c5"


TOLERATE_POOL = [{"key": "dpe.io/pool", "operator": "Exists"}]


def _requests(cpu: str) -> dict:
    return {"requests": {"cpu": cpu, "memory": "1Gi"}}


def _running(core, node: str, name: str):
    return next((p for p in pods_on(core, node) if p.metadata.name.startswith(name) and p.status.phase == "Running"),
                None)


def run_pod(kube, name: str, node: str, run_id: str, cpu: str):
    """A run's own pod as dagster-k8s makes it: a Job's pod labelled with the run id, which the
    scheduler binds to `node`. Returns the pod once it runs."""
    kube.apply([{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "default"},
                 "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {RUN_ID_LABEL: run_id}}, "spec": {
                     "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": node},
                     "tolerations": TOLERATE_POOL,
                     "containers": [{"name": "main", "image": "dpe", "resources": _requests(cpu)}]}}}}])
    return wait_for(f"{name} running on {node}", lambda: _running(kube.core(), node, name))


def executor_pod(kube, name: str, node: str, run_id: str, cpu: str, driver=None):
    """A Spark executor pod as the driver makes it: bound to `node`, labelled `spark-role=executor`
    and with the run id (spark/kubernetes.py), owned by the driver's pod when there is one.
    Returns the pod once it runs."""
    metadata = {"name": name, "labels": {RUN_ID_LABEL: run_id, "spark-role": "executor"}}
    if driver is not None:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": driver.metadata.name,
                                        "uid": driver.metadata.uid, "controller": True}]
    kube.core().create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {"nodeName": node, "restartPolicy": "Never", "tolerations": TOLERATE_POOL,
                 "containers": [{"name": "executor", "image": "spark", "resources": _requests(cpu)}]}})
    return wait_for(f"{name} running on {node}", lambda: _running(kube.core(), node, name))


def finish(kube, pod) -> None:
    """The pod's containers exited 0: its status as the kubelet writes it."""
    pod.status.phase = "Succeeded"
    kube.core().replace_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, pod)


@pytest.fixture
def four_nodes(aws, eks):
    """Three 4-vCPU nodes of the spot pool and one 2-vCPU node of the on-demand pool, joined:
    ({node name: instance id} of the spot pool's, (the other pool's node name, its instance id))."""
    env = environment(aws.url, node_cpus=4, node_memory_gb=16, labels={"dpe.io/pool": "spot-etl"},
                      settings={"group_name": "test-spot", "busy_source": "kubernetes", "instance_types": ["m6i.xlarge"]})
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    open_pool(env.pool("spot-etl"), env).set_target(3)
    open_pool(env.pool("ondemand-etl"), env).set_target(1)

    def ids(group: str) -> list[str]:
        [described] = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
        return sorted(i["InstanceId"] for i in described["Instances"])

    spot = {eks.node_name(iid): iid for iid in ids("test-spot")}
    [other] = ids("test-ondemand")
    other_node = eks.node_name(other)
    for name in [*spot, other_node]:
        wait_for(f"node {name} Ready", lambda: node_ready(eks.core, name))
    return spot, (other_node, other)


def test_a_run_maps_to_the_pool_node_where_its_pods_ask_for_the_most_cpu(four_nodes, kube):
    spot, (other_node, _) = four_nodes
    (n1, a1), (n2, a2), (n3, a3) = sorted(spot.items(), key=lambda item: item[1])
    # Run A: its own pod (the driver) on a1; executors: 2 x 1.5 CPUs on a2, 2 CPUs on a3.
    driver = run_pod(kube, "dagster-run-a", n1, RUN_A, "500m")
    old = executor_pod(kube, "a-exec-old", n3, RUN_A, "1500m", driver)
    finish(kube, old)  # an executor dynamic allocation let go: with it a3 would lead (3.5 CPUs)
    executor_pod(kube, "a-exec-1", n2, RUN_A, "1.5", driver)
    executor_pod(kube, "a-exec-2", n2, RUN_A, "1500m", driver)
    executor_pod(kube, "a-exec-3", n3, RUN_A, "2", driver)
    # Run B: only on another pool's node; a pod of someone else without the label.
    executor_pod(kube, "b-exec-1", other_node, RUN_B, "1")
    kube.core().create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "someones-job"},
        "spec": {"nodeName": n3, "containers": [{"name": "main", "image": "busybox"}]}})
    wait_for("someone's pod running", lambda: _running(kube.core(), n3, "someones-job"))
    nodes = KubeNodes(kube.core(), None, node_instance_id)
    assert nodes.run_instances(spot.values()) == {RUN_A: a2}
    # Seen from the driver pool (a1 only), run A holds a1 through its own pod.
    assert nodes.run_instances([a1]) == {RUN_A: a1}


def test_executor_pods_carry_the_run_id_label_the_lookup_reads():
    assert executor_run_labels(RUN_A) == {"spark.kubernetes.executor.label.dagster/run-id": RUN_A}
    assert len(RUN_A) <= 63  # a Kubernetes label value


def test_aws_asg_pool_with_kubernetes_busy_source_reports_run_nodes(kube_pool, kube, monkeypatch, tmp_path):
    from dpe_dagster.pools.aws.emulator import free_port
    from tests.cluster.control_plane import write_kubeconfig

    pool, (first, second), _, (node1, node2) = kube_pool
    executor_pod(kube, "a-exec-1", node2, RUN_A, "1")
    executor_pod(kube, "b-exec-1", node1, RUN_B, "1")
    # A look reads the pods through the process's watch of them: it sees them within moments.
    wait_for("the pool seeing where the runs are", lambda: pool.run_nodes() == {RUN_A: second, RUN_B: first})
    # The API is gone (the pool's kubeconfig names an API server where nothing listens): no run
    # is known to hold a node, and the tick goes on.
    dead = write_kubeconfig(tmp_path / "unreachable.kubeconfig", f"https://127.0.0.1:{free_port()}", kube.ca_file,
                            "any-token")
    monkeypatch.setenv("KUBECONFIG", str(dead))
    blind = open_pool(pool.config, environment(pool.aws.endpoint_url, labels={"dpe.io/pool": "spot-etl"},
                                               settings=dict(pool.config.settings)))
    assert blind.run_nodes() == {}
    assert {n.id: (n.busy, n.busy_known) for n in blind.nodes()} == {first: (True, False), second: (True, False)}


def test_aws_sim_reports_the_emulators_own_placement_and_demand_carries_it(aws, dagster):  # noqa: F811
    env = environment(aws.url)  # spot-etl: 2-CPU nodes, busy_source dagster_runs
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    config = env.pool("spot-etl")
    pool = open_pool(config, env)
    pool.set_target(2)
    oldest, newest = [n.id for n in sorted(pool.nodes(), key=lambda n: (n.launched_at, n.id))]
    small = [queue_run(dagster, "spot-etl", cpus=1) for _ in range(2)]
    big = queue_run(dagster, "spot-etl", cpus=2)
    waiting = queue_run(dagster, "spot-etl", cpus=2)
    for run_id in (*small, big):
        advance(dagster, run_id, DagsterEventType.RUN_START)
    placed = pool.run_nodes()
    # The same model that makes instances busy: the 2-CPU run first, on the oldest, the two
    # 1-CPU runs together on the next; a queued run holds nothing.
    assert placed == {big: oldest, small[0]: newest, small[1]: newest}
    assert {n.id for n in pool.nodes() if n.busy} == {oldest, newest}
    demand = {run.run_id: run.node_id for run in read_demand(dagster, env, {"spot-etl": pool}).of("spot-etl")}
    assert demand == {**placed, waiting: None}
