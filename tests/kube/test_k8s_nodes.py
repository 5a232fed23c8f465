"""Busy nodes, instance-id mapping, cordoning and draining, on the real control plane
(tests/cluster/): the scheduler places the pods, the DaemonSet and Job controllers make them, kwok
runs them, and the AWS emulator's instances join as EKS nodes (`kube_pool`)."""

from __future__ import annotations

import pytest
from kubernetes import client

from dpe_dagster.kube.nodes import KubeNodes
from dpe_dagster.pools import PoolError
from dpe_dagster.pools.aws.asg import instance_id, node_instance_id
from tests.support.aws import aws, ec2_states, kube_pool, moto  # noqa: F401  (fixtures and helpers)
from tests.support.cluster import cluster, eks, kube, node_ready, pods_on, wait_for  # noqa: F401  (fixtures)

POOL = {"dpe.io/pool": "spot-etl"}
TOLERATE_POOL = [{"key": "dpe.io/pool", "operator": "Exists"}]


def test_instance_ids_come_from_provider_ids():
    assert instance_id("aws:///us-east-1a/i-0123456789abcdef0") == "i-0123456789abcdef0"
    assert instance_id("gce://project/zone/name") is None
    assert instance_id(None) is None


def _job(name: str, node: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "default"},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": node},
                "tolerations": TOLERATE_POOL, "containers": [{"name": "main", "image": "busybox"}]}}}}


def _deployment(name: str, node: str | None) -> dict:
    """One replica on `node`, or (None) on any of the pool's nodes."""
    selector = {"kubernetes.io/hostname": node} if node else POOL
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"nodeSelector": selector, "tolerations": TOLERATE_POOL,
                         "containers": [{"name": "main", "image": "busybox"}]}}}}


def _running(kube, node: str, prefix: str) -> bool:
    return any(p.metadata.name.startswith(prefix) and p.status.phase == "Running" for p in pods_on(kube.core(), node))


def test_what_on_a_node_is_work(kube_pool, kube):
    """DaemonSet pods, finished pods and a replicated pod dpe did not place leave a node idle; a
    Job's pod or a bare pod make it busy; a node that never joined is neither ready nor busy."""
    pool, (first, second), ec2, (node1, node2) = kube_pool
    core = kube.core()
    kube_nodes = KubeNodes(core, "dpe.io/pool=spot-etl", node_instance_id)
    # node1: a replicated pod (a webserver that landed there) and a Job whose pod finished.
    kube.apply([_deployment("stray-webserver", node1), _job("finished", node1)])
    wait_for("the stray pod running", lambda: _running(kube, node1, "stray-webserver"))
    finished = wait_for("the Job's pod", lambda: [p for p in pods_on(core, node1) if p.metadata.name.startswith("finished")])
    finished[0].status.phase = "Succeeded"  # as the kubelet reports a container that exited 0
    core.replace_namespaced_pod_status(finished[0].metadata.name, "default", finished[0])
    # node2: a run's Job.
    kube.apply([_job("dagster-run-0f3a", node2)])
    wait_for("the run's pod running", lambda: _running(kube, node2, "dagster-run-0f3a"))
    busy = kube_nodes.busy_by_instance([first, second, "i-000000000000000ff"], fresh=True)
    assert busy == {
        first: (True, False),  # DaemonSets, a finished pod and a movable pod only
        second: (True, True),  # a run's pod
        "i-000000000000000ff": (False, False),  # booted, not joined the cluster yet
    }
    # The shared view of a tick (the process's watches, which may trail the API by an event) says the same.
    wait_for("the tick's view agreeing", lambda: kube_nodes.busy_by_instance([first, second]) == {
        first: (True, False), second: (True, True)})
    # A bare pod with no owner (someone's kubectl run) is work.
    core.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "debug-shell"},
                                           "spec": {"nodeName": node1, "containers": [{"name": "sh", "image": "busybox"}]}})
    assert kube_nodes.busy_by_instance([first], fresh=True) == {first: (True, True)}


def test_cordon_makes_the_node_unschedulable_and_not_ready_for_work(kube_pool, kube):
    pool, (first, second), ec2, (node1, node2) = kube_pool
    core = kube.core()
    kube_nodes = KubeNodes(core, "dpe.io/pool=spot-etl", node_instance_id)
    other = KubeNodes(core, "dpe.io/pool=other", node_instance_id)
    wait_for("the watch seeing both nodes", lambda: set(kube_nodes.nodes_by_instance()) == {first, second})
    assert other.nodes_by_instance() == {}
    assert kube_nodes.cordon_instances([first, "i-000000000000000ff"]) == [node1]
    assert core.read_node(node1).spec.unschedulable is True and not core.read_node(node2).spec.unschedulable
    wait_for("the tick's view of the cordoned node", lambda: kube_nodes.busy_by_instance([first]) == {
        first: (False, False)})
    # The scheduler keeps new pods off it.
    kube.apply([_job("after-cordon", node1)])
    pod = wait_for("the Job's pod", lambda: [p for p in core.list_namespaced_pod("default").items
                                              if p.metadata.name.startswith("after-cordon")])[0]
    wait_for("the pod reported unschedulable", lambda: any(
        c.type == "PodScheduled" and c.reason == "Unschedulable"
        for c in core.read_namespaced_pod(pod.metadata.name, "default").status.conditions or []))
    kube_nodes.cordon_instances([first], False)
    assert not core.read_node(node1).spec.unschedulable
    wait_for("the pod scheduled once the node is schedulable again", lambda: _running(kube, node1, "after-cordon"))


# -- the aws_asg pool with busy-ness from Kubernetes ----------------------------------------------
def test_pool_cordons_and_drains_an_idle_node_before_terminating_its_instance(kube_pool, kube, eks):
    pool, (idle, busy), ec2, (idle_node, busy_node) = kube_pool
    core = kube.core()
    kube.apply([_job("dagster-run-1", busy_node)])
    wait_for("the run's pod running", lambda: _running(kube, busy_node, "dagster-run-1"))
    # A stray pod that may run on any of the pool's nodes lands on the idle one.
    core.patch_node(busy_node, {"spec": {"unschedulable": True}})
    kube.apply([_deployment("stray-webserver", None)])
    wait_for("the stray pod running", lambda: _running(kube, idle_node, "stray-webserver"))
    core.patch_node(busy_node, {"spec": {"unschedulable": False}})
    nodes = {n.id: n for n in pool.nodes()}
    assert (nodes[idle].busy, nodes[busy].busy) == (False, True)
    assert nodes[idle].state == nodes[busy].state == "running"

    pool.remove_nodes([idle])
    assert ec2_states(ec2, [idle])[idle] in ("shutting-down", "terminated")
    assert pool.target() == 1
    # The stray pod was evicted, and its Deployment put it on the node that is left.
    wait_for("the stray pod rescheduled on the other node", lambda: _running(kube, busy_node, "stray-webserver"))
    wait_for("the terminated instance's Node gone", lambda: idle_node not in {n.metadata.name for n in core.list_node().items})

    with pytest.raises(PoolError, match="refusing to remove busy node"):
        pool.remove_nodes([busy])
    assert ec2_states(ec2, [busy])[busy] == "running"
    assert not core.read_node(busy_node).spec.unschedulable


def test_node_that_takes_work_while_being_cordoned_is_uncordoned_and_kept(kube_pool, kube):
    pool, (first, _), ec2, (node1, _) = kube_pool
    core = kube.core()
    cordon = pool._cordon

    # The scheduler bound a pod to the node in the instant between dpe's check and its cordon.
    def cordon_as_a_pod_lands(instance_ids, cordoned=True):
        changed = cordon(instance_ids, cordoned)
        if cordoned:
            core.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "late-run"},
                                                   "spec": {"nodeName": node1,
                                                            "containers": [{"name": "main", "image": "busybox"}]}})
        return changed

    pool._cordon = cordon_as_a_pod_lands
    with pytest.raises(PoolError, match="took work while being cordoned"):
        pool.remove_nodes([first])
    assert not core.read_node(node1).spec.unschedulable
    assert ec2_states(ec2, [first])[first] == "running" and pool.target() == 2


def test_a_pod_budget_that_refuses_the_drain_keeps_the_node(kube_pool, kube):
    """A movable pod whose PodDisruptionBudget allows no eviction: the API server refuses it, and
    the node is uncordoned and kept, not terminated under the pod."""
    pool, (idle, _), ec2, (idle_node, _) = kube_pool
    core = kube.core()
    kube.apply([_deployment("guarded", idle_node), {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "guarded", "namespace": "default"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}}])
    wait_for("the guarded pod running", lambda: _running(kube, idle_node, "guarded"))
    wait_for("the budget observed", lambda: client.PolicyV1Api(kube.api_client()).read_namespaced_pod_disruption_budget(
        "guarded", "default").status.observed_generation)
    with pytest.raises(PoolError, match="could not drain"):
        pool.remove_nodes([idle])
    assert ec2_states(ec2, [idle])[idle] == "running" and not core.read_node(idle_node).spec.unschedulable


def test_unreachable_kubernetes_api_means_every_node_counts_as_busy(kube_pool, kube, monkeypatch, tmp_path):
    from dpe_dagster.pools import open_pool
    from tests.cluster.control_plane import write_kubeconfig
    from dpe_dagster.pools.aws.emulator import free_port

    pool, ids, ec2, _ = kube_pool
    dead = write_kubeconfig(tmp_path / "dead", f"https://127.0.0.1:{free_port()}", kube.ca_file, "x")
    monkeypatch.setenv("KUBECONFIG", str(dead))
    blind = open_pool(pool.config, pool_environment(pool))
    assert all(n.busy and not n.busy_known for n in blind.nodes())
    with pytest.raises(PoolError, match="refusing to remove busy node"):
        blind.remove_nodes(ids[:1])
    assert ec2_states(ec2, ids[:1])[ids[0]] == "running"


def pool_environment(pool):
    from dpe_dagster.config import parse_environment

    return parse_environment("test", {"aws": {"region": pool.aws.region, "endpoint_url": pool.aws.endpoint_url,
                                              "max_attempts": 3},
                                      "pools": {pool.name: {**pool.config.as_file(), "fallback": None}}})


def test_a_node_that_stops_heartbeating_goes_not_ready_with_its_pods(aws, kube, tmp_path):
    """Its kubelet falls silent: the real node lifecycle controller marks the node NotReady
    (Unknown) and unreachable, and its pods not ready; dpe sees a node that takes no work and still
    holds its run, so it is kept (removed only as stuck, past its boot timeout)."""
    from dpe_dagster.pools import open_pool
    from dpe_dagster.pools.aws.emulator import create_groups
    from tests.cluster.eks import EksNodes
    from tests.cluster.kubelet import PROCESS_KUBELET, ProcessKubelet
    from tests.support.aws import clients, environment

    env = environment(aws.url, labels={"dpe.io/pool": "spot-etl"},
                      settings={"group_name": "test-spot", "busy_source": "kubernetes", "instance_types": ["m6i.large"]})
    create_groups(env, *clients(aws.url))
    pool = open_pool(env.pool("spot-etl"), env)
    core = kube.core()
    with ProcessKubelet(kube, tmp_path / "kubelet", {"PATH": "/usr/bin:/bin"}) as kubelet, \
            EksNodes(kube, aws.url, boot_s=0.2, kubelet=PROCESS_KUBELET) as eks:
        pool.set_target(1)
        [silent] = [n.id for n in pool.nodes()]
        name = eks.node_name(silent)
        wait_for("the node ready", lambda: node_ready(core, name))
        core.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "dagster-run-7", "labels": {"dagster/run-id": "7"}}, "spec": {
            "nodeName": name, "containers": [{"name": "main", "image": "dpe:1", "command": ["sleep", "300"]}]}})
        wait_for("the run's pod running", lambda: core.read_namespaced_pod("dagster-run-7", "default").status.phase
                 == "Running")
        kubelet.silence(name)

        def unreachable():
            node = core.read_node(name)
            ready = next(c for c in node.status.conditions if c.type == "Ready")
            return ready.status == "Unknown" and "node.kubernetes.io/unreachable" in {t.key for t in node.spec.taints or []}

        wait_for("the node lifecycle controller marking the node unreachable", unreachable, timeout_s=60)
        wait_for("its pods marked not ready", lambda: any(
            c.type == "Ready" and c.status == "False"
            for c in core.read_namespaced_pod("dagster-run-7", "default").status.conditions or []))
        kube_nodes = KubeNodes(core, "dpe.io/pool=spot-etl", node_instance_id)
        assert kube_nodes.busy_by_instance([silent], fresh=True) == {silent: (False, True)}
        [node] = pool.nodes()
        assert node.state == "pending" and node.busy
