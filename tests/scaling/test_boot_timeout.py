"""A node that is not ready by its pool's boot timeout (never joined Kubernetes, or cordoned by
someone else) is terminated and charged, and the ledger says why; a busy one never is.

The pool parts run on the real control plane (tests/cluster/): an instance of the AWS emulator
joins as an EKS node only when the test says it has booted (`join`), so one that never does is an
instance whose kubelet never registered."""

from __future__ import annotations

import time

import pytest
from dagster import DagsterEventType

from dpe_dagster.config import parse_pool
from dpe_dagster.pools.base import Node
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.cursor import NodeMemory, observe
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.scaling.policy import PoolState, RunDemand, plan_pool
from dpe_dagster.usage.eventlog import read_node_lifetimes
from dpe_dagster.usage.report import node_rows
from tests.cluster.eks import EksNodes
from tests.reliability.harness import advance, queue_run
from tests.support.aws import aws, dagster, moto  # noqa: F401  (fixtures and helpers)
from tests.support.cluster import cluster, kube, node_ready, pods_on, run_on, wait_for  # noqa: F401  (fixtures)

BOOT_S = 6  # long enough that a loaded machine's first ticks fall inside it; EC2 times are to the second
POOL = parse_pool("spot-etl", {"provider": "local", "max_size": 4, "node_cpus": 2, "node_memory_gb": 8,
                               "price_per_node_hour": 0.1, "idle_timeout_s": 60, "boot_timeout_s": 300})


# -- the pure policy -------------------------------------------------------------------------
def test_a_node_not_ready_by_the_boot_timeout_is_removed_and_replaced_if_still_wanted():
    stuck = Node("stuck", "pending", launched_at=0.0, busy=False)
    run = [RunDemand("r", 2, 4)]
    early = plan_pool(POOL, PoolState(1, (stuck,)), run, 299.0)
    assert (early.target, early.remove) == (1, ())
    late = plan_pool(POOL, PoolState(1, (stuck,)), run, 300.0)
    # Removed, and the run it was meant for gets a new node in the same plan.
    assert (late.target, late.remove, late.removed_because) == (1, ("stuck",), {"stuck": "boot timeout"})
    assert "not ready within the 300s boot timeout" in late.reason
    # Not wanted any more: removed, not replaced.
    gone = plan_pool(POOL, PoolState(1, (stuck,)), [], 300.0)
    assert (gone.target, gone.remove) == (0, ("stuck",))


def test_a_node_not_ready_that_holds_work_is_never_removed_and_a_cordoned_one_counts_from_its_cordon():
    cordoned_busy = Node("b", "pending", launched_at=0.0, busy=True)
    plan = plan_pool(POOL, PoolState(1, (cordoned_busy,)), [], 10_000.0)
    assert plan.remove == ()
    # A node that was ready, then cordoned by someone at t=9000: its boot timeout runs from then.
    cordoned = Node("c", "pending", launched_at=0.0, busy=False)
    state = PoolState(1, (cordoned,), not_ready_since={"c": 9_000.0})
    assert plan_pool(POOL, state, [], 9_299.0).remove == ()
    assert plan_pool(POOL, state, [], 9_300.0).removed_because == {"c": "boot timeout"}


def test_the_sensor_memory_says_since_when_a_node_is_not_ready_and_old_cursors_still_load():
    ready = Node("n", "running", launched_at=100.0, busy=False)
    memory = observe([ready], {}, 200.0)
    assert memory["n"].not_ready_since is None
    memory = observe([Node("n", "pending", launched_at=100.0, busy=False)], memory, 260.0)
    assert memory["n"].not_ready_since == 260.0  # cordoned after it was ready: from the first look
    fresh = observe([Node("m", "pending", launched_at=150.0, busy=False)], {}, 260.0)
    assert fresh["m"].not_ready_since == 150.0  # never seen ready: since its launch
    again = NodeMemory.from_json(memory["n"].to_json())
    assert again == memory["n"]
    # Positional lists, as deployed cursors hold them: the fields in order, the rest at their defaults.
    full = NodeMemory.from_json([None, 12.5, 7.0, 1.0, "spot", "m6i.large", "us-east-1a", 3.0, 4.0, 260.0,
                                 "spot-interruption", 6.0])
    assert full == NodeMemory(None, 12.5, 7.0, 1.0, "spot", "m6i.large", "us-east-1a", 3.0, 4.0, 260.0,
                              "spot-interruption", 6.0)
    ten = NodeMemory.from_json([None, 12.5, 7.0, 1.0, "spot", "m6i.large", "us-east-1a", 3.0, 4.0, 260.0])
    assert (ten.not_ready_since, ten.interrupted, ten.interrupted_at) == (260.0, "", None)
    old = NodeMemory.from_json([5.0, 1.0, 7.0, 1.0, "spot", "m6i.large", "us-east-1a"])
    assert (old.unknown_since, old.unknown_seconds, old.not_ready_since) == (None, 0.0, None)
    assert NodeMemory.from_json([5.0, 1.0, 7.0]).instance_type == "unknown"


# -- an Auto Scaling group whose instance never joins Kubernetes (moto + the real control plane) --
@pytest.fixture
def kube_group(aws, kube):
    from dpe_dagster.pools import open_pool
    from dpe_dagster.pools.aws.emulator import create_groups
    from tests.support.aws import clients, environment

    def make(**pool_fields):
        env = environment(aws.url, labels={"dpe.io/pool": "spot-etl"}, idle_timeout_s=3600,
                          settings={"group_name": "test-spot", "busy_source": "kubernetes"}, **pool_fields)
        autoscaling, ec2 = clients(aws.url)
        create_groups(env, autoscaling, ec2)
        return env, open_pool(env.pool("spot-etl"), env), autoscaling, ec2

    return make


@pytest.fixture
def booting(aws, kube):
    """The emulator's instances join the cluster when `join` says they have booted, not before."""
    return EksNodes(kube, aws.url, boot_s=0)


def join(booting: EksNodes, *instance_ids: str) -> list[str]:
    """These instances (every one that is up, in fact) finish booting: their kubelets register
    them as EKS nodes, which become Ready. Returns the nodes' names."""
    booting.sync()
    names = [booting.node_name(iid) for iid in instance_ids]
    for name in names:
        wait_for(f"node {name} Ready", lambda: node_ready(booting.core, name))
    return names


def past_boot_timeout(pool, timeout_s: float) -> None:
    """Sleep until every node of the pool has been up longer than its boot timeout (EC2 reports
    launch times to the second, so the clock runs from the reported one)."""
    time.sleep(max(0.0, max(n.launched_at for n in pool.nodes()) + timeout_s + 0.2 - time.time()))


def tick(dagster, env, pool, memory):
    config = env.pool("spot-etl")
    return scale_pool(dagster, config, pool, read_demand(dagster, env).of("spot-etl"), memory, time.time())


def test_an_instance_that_never_joins_kubernetes_is_terminated_after_the_boot_timeout_and_charged(
        kube_group, booting, kube, dagster):
    from tests.support.aws import ec2_states, group

    env, pool, autoscaling, ec2 = kube_group(boot_timeout_s=BOOT_S)
    run_id = queue_run(dagster, "spot-etl", cpus=1)  # fits what a 2-vCPU node has for runs
    result, memory = tick(dagster, env, pool, {})
    [never] = [n.id for n in pool.nodes()]
    assert [n.state for n in pool.nodes()] == ["pending"]  # EC2 runs it; Kubernetes never sees it
    assert kube.core().list_node().items == []
    result, memory = tick(dagster, env, pool, memory)
    assert result.removed == [], "inside its boot timeout it is left to boot"

    past_boot_timeout(pool, BOOT_S)
    result, memory = tick(dagster, env, pool, memory)
    assert [(r.node_id, r.removed_because) for r in result.removed] == [(never, "boot timeout")]
    assert f"not ready within the {BOOT_S}s boot timeout" in result.plan.reason
    assert ec2_states(ec2, [never])[never] in ("shutting-down", "terminated")
    # The queued run still needs a node: a new instance is asked for in the same tick.
    [replacement] = [n.id for n in pool.nodes()]
    assert replacement != never and group(autoscaling, "test-spot")["DesiredCapacity"] == 1

    [lifetime] = read_node_lifetimes(dagster)
    assert (lifetime.node_id, lifetime.removed_because, lifetime.busy_seconds) == (never, "boot timeout", 0.0)
    assert lifetime.lifetime_seconds >= BOOT_S and lifetime.cost_usd > 0
    [row] = node_rows([lifetime])
    assert row["removed_because"] == "boot timeout" and row["paid_usd"] == pytest.approx(lifetime.cost_usd)

    # The replacement joins and takes the run: it is never removed for its boot, however long it runs.
    [node] = join(booting, replacement)
    run_on(kube, "dagster-run-1", node, run_id)
    advance(dagster, run_id, DagsterEventType.RUN_START)
    wait_for("the pool seeing its node ready and busy",
             lambda: [(n.id, n.state, n.busy) for n in pool.nodes()] == [(replacement, "running", True)])
    past_boot_timeout(pool, BOOT_S)
    result, memory = tick(dagster, env, pool, memory)
    assert result.removed == [] and [n.id for n in pool.nodes()] == [replacement]
    assert ec2_states(ec2, [replacement])[replacement] == "running"


def test_an_idle_node_someone_cordons_is_removed_a_boot_timeout_later_a_busy_one_never(
        kube_group, booting, kube, dagster):
    from tests.support.aws import ec2_states

    env, pool, autoscaling, ec2 = kube_group(boot_timeout_s=2)
    pool.set_target(2)
    idle, busy = sorted(n.id for n in pool.nodes())
    idle_node, busy_node = join(booting, idle, busy)
    run_on(kube, "someones-job", busy_node)
    wait_for("the pool seeing both nodes ready, one busy", lambda: {(n.id, n.state, n.busy) for n in pool.nodes()} == {
        (idle, "running", False), (busy, "running", True)})
    result, memory = tick(dagster, env, pool, {})
    assert result.removed == [] and {n.state for n in pool.nodes()} == {"running"}
    time.sleep(2.2)  # older than the boot timeout already: what counts is how long it is not ready
    core = kube.core()
    for name in (idle_node, busy_node):
        core.patch_node(name, {"spec": {"unschedulable": True}})  # `kubectl cordon` by someone else
    result, memory = tick(dagster, env, pool, memory)
    assert result.removed == []
    assert {n.state for n in pool.nodes()} == {"pending"}
    time.sleep(2.2)
    result, memory = tick(dagster, env, pool, memory)
    assert [(r.node_id, r.removed_because) for r in result.removed] == [(idle, "boot timeout")]
    assert ec2_states(ec2, [idle])[idle] in ("shutting-down", "terminated")
    assert ec2_states(ec2, [busy])[busy] == "running"
    # The busy node keeps its work, still cordoned by whoever cordoned it.
    assert core.read_node(busy_node).spec.unschedulable is True
    assert any(p.metadata.name.startswith("someones-job") and p.status.phase == "Running"
               for p in pods_on(core, busy_node))


def test_a_stuck_instance_at_the_groups_min_size_is_replaced_not_refused(kube_group, kube, dagster):
    from tests.support.aws import ec2_states, group

    env, pool, autoscaling, ec2 = kube_group(boot_timeout_s=BOOT_S, min_size=1)
    autoscaling.update_auto_scaling_group(AutoScalingGroupName="test-spot", MinSize=1, DesiredCapacity=1)
    [never] = [n.id for n in pool.nodes()]
    result, memory = tick(dagster, env, pool, {})
    assert result.removed == [] and [n.state for n in pool.nodes()] == ["pending"]
    past_boot_timeout(pool, BOOT_S)
    result, memory = tick(dagster, env, pool, memory)
    assert [(r.node_id, r.removed_because) for r in result.removed] == [(never, "boot timeout")]
    assert ec2_states(ec2, [never])[never] in ("shutting-down", "terminated")
    assert group(autoscaling, "test-spot")["DesiredCapacity"] == 1
    assert [n.id for n in pool.nodes()] != [never]
