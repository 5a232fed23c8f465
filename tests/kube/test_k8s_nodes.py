"""Busy nodes, instance-id mapping and cordoning, through the real kubernetes client.

No Kubernetes API server can run on this machine, so `LoopbackKubeApi` serves Kubernetes-format
JSON (Node, Pod and Job objects as an EKS cluster returns them) over HTTP on 127.0.0.1 and applies
the few writes dpe makes (merge-patching a node, creating a Job) the way the API server does.
"""

from __future__ import annotations

import time

import pytest

from dpe_dagster.kube.nodes import KubeNodes
from dpe_dagster.pools.aws.asg import instance_id
from tests.fakes.kube_api import TS, LoopbackKubeApi, _fields_match, core_api, kube_api  # noqa: F401  (fixture)
from tests.support.aws import aws, ec2_states, kube_pool, moto  # noqa: F401  (fixtures and helpers)


def test_instance_ids_come_from_provider_ids():
    assert instance_id("aws:///us-east-1a/i-0123456789abcdef0") == "i-0123456789abcdef0"
    assert instance_id("gce://project/zone/name") is None
    assert instance_id(None) is None


def test_node_with_only_daemonset_mirror_or_finished_pods_is_idle_any_other_pod_makes_it_busy(kube_api):
    kube_api.add_node("ip-10-0-1-1", "i-000000000000000a1")
    kube_api.add_node("ip-10-0-1-2", "i-000000000000000a2")
    kube_api.add_node("ip-10-0-1-3", "i-000000000000000a3", ready=False)
    for node in ("ip-10-0-1-1", "ip-10-0-1-2"):
        kube_api.add_pod(f"aws-node-{node}", node, owner_kind="DaemonSet", namespace="kube-system")
        kube_api.add_pod(f"kube-proxy-{node}", node, owner_kind="DaemonSet", namespace="kube-system")
    kube_api.add_pod("static-etcd", "ip-10-0-1-1", owner_kind="Node", mirror=True, namespace="kube-system")
    kube_api.add_pod("dagster-run-done", "ip-10-0-1-1", phase="Succeeded")
    kube_api.add_pod("dagster-run-0f3a", "ip-10-0-1-2")
    kube = KubeNodes(core_api(kube_api.url), None, instance_id)
    busy = kube.busy_by_instance(["i-000000000000000a1", "i-000000000000000a2", "i-000000000000000a3",
                                  "i-000000000000000ff"])
    assert busy == {
        "i-000000000000000a1": (True, False),   # daemons, a static pod and a finished run only
        "i-000000000000000a2": (True, True),    # a run's pod
        "i-000000000000000a3": (False, False),  # NotReady: cannot take work yet
        "i-000000000000000ff": (False, False),  # booted, not joined the cluster yet
    }
    # A bare pod with no owner (someone's kubectl run) holds work too.
    kube_api.add_pod("debug-shell", "ip-10-0-1-1", owner_kind=None)
    assert kube.busy_by_instance(["i-000000000000000a1"]) == {"i-000000000000000a1": (True, True)}


def test_cordon_makes_the_node_unschedulable_and_not_ready_for_work(kube_api):
    kube_api.add_node("ip-10-0-1-1", "i-000000000000000a1", labels={"dpe.io/pool": "spot-etl"})
    kube_api.add_node("ip-10-0-9-9", "i-000000000000000b1", labels={"dpe.io/pool": "other"})
    kube = KubeNodes(core_api(kube_api.url), "dpe.io/pool=spot-etl", instance_id)
    assert set(kube.nodes_by_instance()) == {"i-000000000000000a1"}
    assert kube.cordon_instances(["i-000000000000000a1", "i-000000000000000b1"]) == ["ip-10-0-1-1"]
    assert kube_api.nodes["ip-10-0-1-1"]["spec"]["unschedulable"] is True
    assert "unschedulable" not in kube_api.nodes["ip-10-0-9-9"]["spec"]
    assert kube.busy_by_instance(["i-000000000000000a1"]) == {"i-000000000000000a1": (False, False)}
    kube.cordon_instances(["i-000000000000000a1"], False)
    assert kube_api.nodes["ip-10-0-1-1"]["spec"]["unschedulable"] is False


# -- the aws_asg pool with busy-ness from Kubernetes (`kube_pool`: tests/support/aws.py) ---------
def test_pool_cordons_an_idle_node_before_terminating_its_instance(kube_pool, kube_api):
    from tests.support.aws import ec2_states

    pool, (idle, busy), ec2 = kube_pool
    kube_api.add_pod("dagster-run-1", "ip-10-0-2-1")
    nodes = {n.id: n for n in pool.nodes()}
    assert (nodes[idle].busy, nodes[busy].busy) == (False, True)
    assert nodes[idle].state == nodes[busy].state == "running"

    pool.remove_nodes([idle])
    patches = [i for i, r in enumerate(kube_api.requests) if r == ("PATCH", "/api/v1/nodes/ip-10-0-2-0")]
    assert patches and kube_api.nodes["ip-10-0-2-0"]["spec"]["unschedulable"] is True
    assert ec2_states(ec2, [idle])[idle] in ("shutting-down", "terminated")
    assert pool.target() == 1

    from dpe_dagster.pools import PoolError

    with pytest.raises(PoolError, match="refusing to remove busy node"):
        pool.remove_nodes([busy])
    assert ec2_states(ec2, [busy])[busy] == "running"
    assert "unschedulable" not in kube_api.nodes["ip-10-0-2-1"]["spec"]


def test_node_that_takes_work_while_being_cordoned_is_uncordoned_and_kept(kube_pool, kube_api):
    from dpe_dagster.pools import PoolError
    from tests.support.aws import ec2_states

    pool, (first, _), ec2 = kube_pool
    # The scheduler binds a pod to the node in the instant between dpe's check and its cordon.
    def bind_a_pod_as_it_is_cordoned(name):
        if kube_api.nodes[name]["spec"].get("unschedulable") and not any(
                p["metadata"]["name"] == "late-run" for p in kube_api.pods):
            kube_api.add_pod("late-run", name)

    kube_api.on_patch = bind_a_pod_as_it_is_cordoned
    with pytest.raises(PoolError, match="took work while being cordoned"):
        pool.remove_nodes([first])
    assert kube_api.nodes["ip-10-0-2-0"]["spec"]["unschedulable"] is False
    assert ec2_states(ec2, [first])[first] == "running" and pool.target() == 2


def test_unreachable_kubernetes_api_means_every_node_counts_as_busy(kube_pool, kube_api):
    pool, ids, ec2 = kube_pool
    kube_api.close()
    time.sleep(0.1)
    assert all(n.busy for n in pool.nodes())
    from dpe_dagster.pools import PoolError

    with pytest.raises(PoolError, match="refusing to remove busy node"):
        pool.remove_nodes(ids[:1])
