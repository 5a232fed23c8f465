"""A scale-up AWS has not filled is withdrawn when the demand for it goes away: otherwise AWS
launches, later, nodes no run needs. The part asked for that never became an instance is lowered
away; instances that exist (busy ones above all) are never dropped by lowering.

moto fills any desired capacity at once (and replaces instances terminated behind its back), so
capacity AWS has not launched yet is emulated on the pool's Auto Scaling client: a botocore hook
leaves those instances out of DescribeAutoScalingGroups answers, as AWS lists a group whose
desired capacity is not filled. Lowering the desired capacity then really happens in moto, which,
like AWS, drops unprotected capacity only."""

from __future__ import annotations

import time

from dagster import DagsterEventType

from dpe_dagster.pools import open_pool
from dpe_dagster.pools.aws.emulator import create_groups
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.demand import read_demand
from tests.reliability.harness import advance, queue_run
from tests.support.aws import (  # noqa: F401  (fixtures and helpers)
    REGION,
    autoscaling_that_has_not_launched,
    aws,
    clients,
    dagster,
    ec2_states,
    environment,
    group,
    moto,
)


def test_unfilled_desired_capacity_is_withdrawn_when_demand_drops_but_busy_nodes_stay(aws, dagster):  # noqa: F811
    env = environment(aws.url)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    config = env.pool("spot-etl")
    pool = open_pool(config, env)
    runs = [queue_run(dagster, "spot-etl") for _ in range(3)]  # 3 nodes' worth
    now = time.time()
    tick, memory = scale_pool(dagster, config, pool, read_demand(dagster, env).of("spot-etl"), {}, now)
    assert group(autoscaling, "test-spot")["DesiredCapacity"] == 3

    advance(dagster, runs[0], DagsterEventType.RUN_START)
    busy = [n.id for n in pool.nodes() if n.busy]
    assert len(busy) == 1
    never_arrived = {n.id for n in pool.nodes() if not n.busy}
    pool = open_pool(config, env)  # a later process: its own look at the group
    pool.autoscaling = autoscaling_that_has_not_launched(aws.url, never_arrived)
    for run_id in runs[1:]:  # the demand for the two others goes away
        advance(dagster, run_id, DagsterEventType.RUN_CANCELED)

    tick, memory = scale_pool(dagster, config, pool, read_demand(dagster, env).of("spot-etl"), memory, now + 1)
    asg = group(autoscaling, "test-spot")
    assert asg["DesiredCapacity"] == 1, tick.plan.reason
    assert tick.removed == []
    assert ec2_states(ec2, busy) == {busy[0]: "running"}
    assert [n.id for n in pool.nodes()] == busy
    assert {i["InstanceId"]: i["ProtectedFromScaleIn"] for i in asg["Instances"]
            if i["InstanceId"] in busy} == {busy[0]: True}


def test_policy_withdraws_only_the_part_no_node_fills():
    from dpe_dagster.config import parse_pool
    from dpe_dagster.pools.base import Node
    from dpe_dagster.scaling.policy import PoolState, RunDemand, plan_pool

    pool = parse_pool("p", {"provider": "local", "max_size": 6, "min_size": 1, "node_cpus": 2, "node_memory_gb": 8,
                            "price_per_node_hour": 0.1, "idle_timeout_s": 60})
    busy = Node("b", "running", 0, busy=True)
    booting = Node("n", "pending", 0, busy=False)
    # 5 asked for, 2 exist, the runs now need 1 node: withdraw the 3 that have no node, keep both nodes.
    plan = plan_pool(pool, PoolState(5, (busy, booting)), [RunDemand("r", 2, 4)], 0)
    assert (plan.target, plan.remove) == (2, ()) and "withdraw 3 node(s)" in plan.reason
    # No run at all: never below min_size, and nothing when every asked node exists.
    assert plan_pool(pool, PoolState(3, ()), [], 0).target == 1
    assert plan_pool(pool, PoolState(2, (busy, booting)), [], 0).target == 2
