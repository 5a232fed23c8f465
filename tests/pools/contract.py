"""What every provider's pool must do, on the real control plane: one suite, run for each provider
whose nodes are Kubernetes nodes (tests/pools/test_provider_contract.py collects it).

Each provider gives a `Setup` (fixture `setup`, parametrized by provider name): its pool
`spot-etl` (max 4 nodes, min 0, labels `dpe.io/pool: spot-etl`, busy-ness from Kubernetes) on a
fresh group of machines whose Nodes join `BOOT_S` after they are made, and what the suite needs
to look behind the pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest

from dpe_dagster.config import Environment
from dpe_dagster.pools import PoolError, open_pool
from tests.support.cluster import pods_on, run_on, wait_for

BOOT_S = 2.0  # how long after a machine is made its Node joins


@dataclass
class Setup:
    provider: str
    env: Environment
    kube: Any  # the ControlPlane
    node_name: Callable[[str], str]  # the Kubernetes node of a pool node, once it has joined
    set_bounds: Callable[[int, int], None]  # the group's own minimum and maximum size
    gone: Callable[[str], bool]  # the machine behind a pool node is gone (or going)

    def open(self):
        return open_pool(self.env.pool("spot-etl"), self.env)


@pytest.fixture
def aws_asg_setup(aws, kube):
    """An Auto Scaling group of the AWS emulator whose instances join as EKS nodes."""
    from dpe_dagster.pools.aws.emulator import create_groups
    from tests.cluster.eks import EksNodes
    from tests.support.aws import clients, ec2_states, environment

    env = environment(aws.url, labels={"dpe.io/pool": "spot-etl"},
                      settings={"group_name": "test-spot", "busy_source": "kubernetes",
                                "instance_types": ["m6i.large", "m5.large"]})
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)

    def set_bounds(low: int, high: int) -> None:
        autoscaling.update_auto_scaling_group(AutoScalingGroupName="test-spot", MinSize=low, MaxSize=high)

    def gone(node_id: str) -> bool:
        return ec2_states(ec2, [node_id])[node_id] in ("shutting-down", "terminated")

    with EksNodes(kube, aws.url, boot_s=BOOT_S) as eks:
        yield Setup("aws_asg", env, kube, eks.node_name, set_bounds, gone)


@pytest.fixture
def clusterapi_setup(capi, kube):
    """A Cluster API MachineDeployment whose Machines the stand-in controllers turn into Nodes."""
    from dpe_dagster.pools.clusterapi.pool import GROUP, MAX_SIZE_ANNOTATION, MIN_SIZE_ANNOTATION, VERSION
    from tests.support.cluster_api import DEPLOYMENT, deploy, environment

    assert capi.machines.boot_s == BOOT_S
    env = environment(capi.namespace)
    deploy(capi, env)

    def node_name(machine: str) -> str:
        return wait_for(f"machine {machine}'s node", lambda: ((capi.custom.get_namespaced_custom_object(
            GROUP, VERSION, capi.namespace, "machines", machine).get("status") or {}).get("nodeRef") or {}).get("name"))

    def set_bounds(low: int, high: int) -> None:
        capi.custom.patch_namespaced_custom_object(GROUP, VERSION, capi.namespace, "machinedeployments", DEPLOYMENT, {
            "metadata": {"annotations": {MIN_SIZE_ANNOTATION: str(low), MAX_SIZE_ANNOTATION: str(high)}}})

    def gone(machine: str) -> bool:
        return machine not in {m["metadata"]["name"] for m in capi.machines_of()
                               if not m["metadata"].get("deletionTimestamp")}

    return Setup("clusterapi", env, kube, node_name, set_bounds, gone)


@pytest.fixture(params=["aws_asg", "clusterapi"])
def setup(request):
    return request.getfixturevalue(f"{request.param}_setup")


def grown(pool, size: int) -> list:
    """Ask for `size` nodes and wait until they all run (joined, Ready); sorted by id."""
    pool.set_target(size)
    return wait_for(f"{size} node(s) running", lambda: (
        nodes := sorted(pool.nodes(), key=lambda n: n.id)) and len(nodes) == size and all(
        n.state == "running" for n in nodes) and nodes, timeout_s=BOOT_S + 30)


# -- the contract ---------------------------------------------------------------------------------
def test_the_target_is_what_was_asked_within_the_groups_bounds(setup):
    pool = setup.open()
    assert pool.nodes() == [] and pool.target() == 0  # one look: the nodes, then the target
    setup.set_bounds(1, 3)
    pool.set_target(0)
    assert pool.target() == 1, "never under the group's minimum"
    pool.set_target(7)
    assert pool.target() == 3, "never over the group's maximum"
    wait_for("3 nodes", lambda: len(pool.nodes()) == 3)
    pool.set_target(2)
    assert pool.target() == 3, "lowering the target never takes away a node that exists"
    with pytest.raises(PoolError, match="under its minimum size 1"):
        pool.remove_nodes([n.id for n in pool.nodes()])
    assert len(pool.nodes()) == 3


def test_nodes_are_pending_until_their_kubernetes_node_is_ready_then_running(setup):
    import time

    pool = setup.open()
    asked = time.time()
    pool.set_target(1)
    [node] = wait_for("the new node listed", lambda: pool.nodes())
    assert (node.state, node.busy, node.lifecycle) == ("pending", False, "spot")
    assert asked - 2 <= node.launched_at <= time.time() + 1  # the API's clocks count whole seconds
    [running] = grown(pool, 1)
    assert running.id == node.id and running.launched_at == node.launched_at
    setup.kube.core().patch_node(setup.node_name(node.id), {"spec": {"unschedulable": True}})  # someone cordons it
    wait_for("the cordoned node pending again", lambda: [n.state for n in pool.nodes()] == ["pending"])


def test_a_busy_node_or_an_unknown_id_is_refused_an_idle_node_removed_and_the_target_lowered(setup):
    pool = setup.open()
    busy, idle = grown(pool, 2)
    run_on(setup.kube, "dagster-run-1", setup.node_name(busy.id), "run-1")
    wait_for("the pool seeing one node busy", lambda: {n.id: n.busy for n in pool.nodes()} == {
        busy.id: True, idle.id: False})
    assert pool.run_nodes() == {"run-1": busy.id}
    with pytest.raises(PoolError, match=f"refusing to remove busy node.*{busy.id}"):
        pool.remove_nodes([busy.id])
    with pytest.raises(PoolError, match="no node.* no-such-node"):
        pool.remove_nodes(["no-such-node"])
    assert pool.target() == 2 and not setup.kube.core().read_node(setup.node_name(busy.id)).spec.unschedulable

    idle_name = setup.node_name(idle.id)
    pool.remove_nodes([idle.id])
    assert pool.target() == 1
    wait_for("the idle node's machine gone", lambda: setup.gone(idle.id))
    wait_for("the idle node's Kubernetes node gone", lambda: idle_name not in {
        n.metadata.name for n in setup.kube.core().list_node().items})
    assert [n.id for n in pool.nodes()] == [busy.id]
    assert any(p.metadata.name.startswith("dagster-run-1") and p.status.phase == "Running"
               for p in pods_on(setup.kube.core(), setup.node_name(busy.id)))


def test_a_stuck_node_at_the_groups_minimum_is_replaced(setup):
    pool = setup.open()
    setup.set_bounds(1, 4)
    [node] = grown(pool, 1)
    setup.kube.core().patch_node(setup.node_name(node.id), {"spec": {"unschedulable": True}})
    wait_for("the node not ready", lambda: [n.state for n in pool.nodes()] == ["pending"])
    with pytest.raises(PoolError, match="under its minimum size 1"):
        pool.remove_nodes([node.id])
    pool.remove_nodes([node.id], stuck=[node.id])
    assert pool.target() == 1
    wait_for("the stuck node's machine gone", lambda: setup.gone(node.id))
    [replacement] = grown(pool, 1)
    assert replacement.id != node.id


def test_an_overdue_scale_up_is_seen_by_every_process_and_backs_the_pool_off(setup):
    """The scale-up mark and the back-off live on the pool's object in its cloud: a second pool
    object (another dpe process) sees them; backed off, the pool asks for nothing more, and what
    was asked for but has no machine is withdrawn."""
    import time

    pool = setup.open()
    [node] = grown(pool, 1)
    assert not pool.scale_up_health().overdue and pool.backoff() is None
    setup.set_bounds(0, 4)
    asked = time.time()
    pool.set_target(2)
    health = setup.open().scale_up_health(now=asked + setup.env.pool("spot-etl").boot_timeout_s + 5)
    assert health.overdue and "boot timeout" in health.reason, health

    pool.back_off("the test's capacity never came", now=time.time())
    other = setup.open()
    assert "the test's capacity never came" in (other.backoff() or "")
    # Capacity with no machine is withdrawn, machines are kept (a controller may still be making one).
    wait_for("the target down to the machines", lambda: pool.target() == len(pool.nodes()) >= 1)
    before = pool.target()
    other.set_target(4)
    assert pool.target() == before, "a backed-off pool is asked for nothing"
    assert other.backoff(now=time.time() + setup.env.pool("spot-etl").backoff_s + 1) is None
