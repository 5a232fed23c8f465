"""A node EC2 is taking away (interruption warning, rebalance recommendation): the replacement asked
for it is not withdrawn by the next tick, the node's lifetime record says it was interrupted, and
nothing is charged twice. Pure policy first, then against moto's server with a real Dagster instance."""

from __future__ import annotations

import pytest

from dpe_dagster.config import parse_pool
from dpe_dagster.pools.base import REBALANCE_RECOMMENDATION, SPOT_INTERRUPTION, Node
from dpe_dagster.scaling.policy import PoolState, RunDemand, plan_pool
from tests.reliability.harness import advance, queue_run  # noqa: F401  (fixtures and helpers)
from tests.support.aws import (  # noqa: F401  (fixtures and helpers)
    autoscaling_that_has_not_launched,
    aws,
    clients,
    dagster,
    environment,
    group,
    interruption_queue,
    moto,
    pools_of,
    warn,
)


def _pool(min_size: int = 0, max_size: int = 4):
    return parse_pool("spot-etl", {"provider": "local", "min_size": min_size, "max_size": max_size, "node_cpus": 2,
                                   "node_memory_gb": 8, "price_per_node_hour": 0.035, "idle_timeout_s": 60})


def _warned(busy: bool, kind: str = SPOT_INTERRUPTION) -> Node:
    return Node("i-warned", "running", 0, busy=busy, interrupted=kind, interrupted_at=50.0)


def test_replacement_for_a_busy_warned_node_is_kept_before_aws_lists_it():
    # The reader raised the target 1 -> 2; AWS lists only the warned node, which the run still holds.
    run = RunDemand("r", 2, 4, node_id="i-warned")
    plan = plan_pool(_pool(), PoolState(2, (_warned(busy=True),)), [run], 100)
    assert (plan.target, plan.remove) == (2, ()), plan.reason
    assert "i-warned (spot-interruption)" in plan.reason
    # Without the mark, the same state withdraws the replacement: what the mark is for.
    unmarked = Node("i-warned", "running", 0, busy=True)
    assert plan_pool(_pool(), PoolState(2, (unmarked,)), [run], 100).target == 1
    # Once AWS lists the replacement (pending), still 2: one for the run, the warned one until EC2 takes it.
    booting = Node("i-new", "pending", 90, busy=False)
    assert plan_pool(_pool(), PoolState(2, (_warned(busy=True), booting)), [run], 100).target == 2


def test_warned_node_is_no_room_so_its_run_gets_a_node_even_unasked():
    # The warning came while the pool was full, so the reader asked nobody; once there is room the
    # policy asks for the node the run needs elsewhere.
    run = RunDemand("r", 2, 4, node_id="i-warned")
    plan = plan_pool(_pool(), PoolState(1, (_warned(busy=True),)), [run], 100)
    assert (plan.target, plan.remove) == (2, ())
    # At max_size it is capped, and says it wants more than it gets.
    capped = plan_pool(_pool(max_size=1), PoolState(1, (_warned(busy=True),)), [run], 100)
    assert capped.target == 1 and capped.wanted > capped.target


def test_idle_interrupted_node_is_removed_at_once_and_min_size_replaced():
    # Rebalance recommendation on an idle node (no replacement asked): it is cordoned, it can take no
    # work, so it goes now, not after the idle timeout; min_size 1 keeps one node by asking first.
    idle = _warned(busy=False, kind=REBALANCE_RECOMMENDATION)
    plan = plan_pool(_pool(min_size=1), PoolState(1, (idle,)), [], 100)
    assert plan.remove == ("i-warned",) and plan.target == 1, plan.reason
    # No demand and no minimum: the warned node and the replacement asked for it both go.
    plan = plan_pool(_pool(), PoolState(2, (_warned(busy=False),)), [], 100)
    assert (plan.target, plan.remove) == (0, ("i-warned",)), plan.reason


def test_other_nodes_are_planned_as_before():
    # A healthy idle node past its timeout is still removed; the busy warned one is kept.
    old_idle = Node("i-idle", "running", 0, busy=False)
    state = PoolState(3, (_warned(busy=True), old_idle), idle_since={"i-idle": 0})
    plan = plan_pool(_pool(), state, [RunDemand("r", 2, 4, node_id="i-warned")], 100)
    # The run needs one healthy node: the idle one is it, so it stays; the unlaunched third is withdrawn.
    assert (plan.target, plan.remove) == (2, ()), plan.reason
    plan = plan_pool(_pool(), state, [], 100)
    assert (plan.target, plan.remove) == (1, ("i-idle",)), plan.reason


# -- against moto's server, with a real Dagster instance ------------------------------------------
import json  # noqa: E402
import time  # noqa: E402

from dagster import DagsterEventType  # noqa: E402

from dpe_dagster.pools import open_pool  # noqa: E402
from dpe_dagster.pools.aws.emulator import create_groups  # noqa: E402
from dpe_dagster.pools.aws.interruptions import REBALANCE, InterruptionReader  # noqa: E402
from dpe_dagster.scaling.control import scale_pool  # noqa: E402
from dpe_dagster.scaling.cursor import dump_cursor, load_cursor  # noqa: E402
from dpe_dagster.scaling.demand import read_demand  # noqa: E402
from dpe_dagster.usage.eventlog import read_node_lifetimes, read_run_usage  # noqa: E402
from dpe_dagster.usage.writes import record_run_usage  # noqa: E402
from dpe_dagster.usage.pricing import pricer_for  # noqa: E402
from dpe_dagster.usage.summary import Window, by_pool  # noqa: E402


def _tick(dagster, env, pool, memory, now):
    config = env.pool(pool.name)
    tick, memory = scale_pool(dagster, config, pool, read_demand(dagster, env).of(pool.name), memory, now)
    return tick, load_cursor(dump_cursor({pool.name: memory}))[pool.name]  # as a restarted daemon reads it


def _usage_nodes_json(dagster_home) -> list[dict]:
    from typer.testing import CliRunner

    from dpe_dagster.cli import app

    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    result = CliRunner().invoke(app, ["usage", "--nodes", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_warned_node_keeps_its_replacement_is_recorded_interrupted_and_nothing_is_charged_twice(
        aws, dagster, tmp_path):  # noqa: F811
    env = environment(aws.url)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    pools = pools_of(env)
    run_id = queue_run(dagster, "spot-etl")
    now = time.time()
    _, memory = _tick(dagster, env, pools["spot-etl"], {}, now)
    advance(dagster, run_id, DagsterEventType.RUN_START)
    _, memory = _tick(dagster, env, pools["spot-etl"], memory, now + 5)
    [warned] = pools["spot-etl"].nodes()
    assert warned.busy and not warned.interrupted

    sqs, events, queue = interruption_queue(aws.url)
    sent = time.time()
    warn(events, warned.id)
    [action] = InterruptionReader(sqs, queue, env, pools, instance=dagster).poll_once(wait_s=1)
    assert action.grow_pool == "spot-etl" and group(autoscaling, "test-spot")["DesiredCapacity"] == 2
    replacement = {i["InstanceId"] for i in group(autoscaling, "test-spot")["Instances"]} - {warned.id}

    # The autoscaler's next tick, in its own process, before AWS lists the replacement.
    pool = open_pool(env.pool("spot-etl"), env)
    pool.autoscaling = autoscaling_that_has_not_launched(aws.url, replacement)
    [seen] = pool.nodes()
    assert (seen.id, seen.interrupted) == (warned.id, "spot-interruption")
    assert abs(seen.interrupted_at - sent) < 5, "the warning's time, as EC2 sent it"
    tick, memory = _tick(dagster, env, pool, memory, now + 6)
    assert group(autoscaling, "test-spot")["DesiredCapacity"] == 2, tick.plan.reason
    assert tick.removed == [] and "going away" in tick.plan.reason

    # EC2 takes the instance (the group keeps its desired capacity, as AWS does); the run fails
    # with it and is retried on the replacement, which finishes.
    pool = pools["spot-etl"]
    autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=warned.id, ShouldDecrementDesiredCapacity=False)
    advance(dagster, run_id, DagsterEventType.RUN_FAILURE)
    retry = queue_run(dagster, "spot-etl")
    _, memory = _tick(dagster, env, pool, memory, now + 10)
    advance(dagster, retry, DagsterEventType.RUN_START)
    _, memory = _tick(dagster, env, pool, memory, now + 15)
    advance(dagster, retry, DagsterEventType.RUN_SUCCESS)
    for step in (20, 60, 100):  # idle past the 30 s timeout: every node goes
        _, memory = _tick(dagster, env, pool, memory, now + step)
    assert pool.nodes() == []

    lifetimes = read_node_lifetimes(dagster)
    [lost] = [n for n in lifetimes if n.node_id == warned.id]
    assert lost.interrupted == "spot-interruption" and lost.interrupted_at == seen.interrupted_at
    assert [n.interrupted for n in lifetimes if n.node_id != warned.id] == [""] * (len(lifetimes) - 1)
    rows = {row["node_id"]: row for row in _usage_nodes_json(tmp_path)}
    assert rows[warned.id]["interrupted"] == "spot-interruption"
    assert rows[warned.id]["interrupted_at"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(sent)))

    # Charged once: each run its share of one node while it ran (not of the warned node and its
    # replacement both); what the pool paid for its nodes is what the runs were charged plus idle.
    pricer = pricer_for(env)
    for record in dagster.get_run_records():
        record_run_usage(dagster, record, env, {}, pricer)
    records = read_run_usage(dagster)
    assert sorted(r.run_id for r in records) == sorted([run_id, retry])
    for record in records:
        assert 0 < record.node_seconds <= (record.ended_at - record.started_at) * record.node_share + 1e-6, record
    [spot] = [row for row in by_pool(records, lifetimes, Window()) if row["pool"] == "spot-etl"]
    assert spot["paid_usd"] == pytest.approx(sum(n.cost_usd for n in lifetimes if n.pool == "spot-etl"), abs=0.005)
    assert spot["paid_usd"] == pytest.approx(spot["attributed_usd"] + spot["idle_usd"], abs=1e-9)
    assert spot["attributed_usd"] == pytest.approx(sum(r.cost_usd for r in records), abs=1e-9)


def test_a_redelivered_warning_asks_for_nothing_more_and_a_later_rebalance_does_not_unmark_it(aws, dagster):  # noqa: F811
    env = environment(aws.url)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    pools = pools_of(env)
    pools["spot-etl"].set_target(1)
    [node] = pools["spot-etl"].nodes()
    sqs, events, queue = interruption_queue(aws.url)
    reader = InterruptionReader(sqs, queue, env, pools)
    warn(events, node.id)
    warn(events, node.id)  # SQS delivers at least once: the same warning may come twice
    actions = []
    for _ in range(5):
        actions += reader.poll_once(wait_s=1)
        if len(actions) == 2:
            break
    assert [a.grow_pool for a in actions] == ["spot-etl", None], [a.reason for a in actions]
    assert group(autoscaling, "test-spot")["DesiredCapacity"] == 2
    warn(events, node.id, REBALANCE)
    reader.poll_once(wait_s=1)
    assert {n.id: n.interrupted for n in pools["spot-etl"].nodes()}[node.id] == "spot-interruption"


def test_an_idle_node_advised_to_rebalance_goes_at_once_and_its_lifetime_says_why(aws, dagster):  # noqa: F811
    env = environment(aws.url)  # idle timeout 30 s: not what removes it
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    pools = pools_of(env)
    pool = pools["spot-etl"]
    pool.set_target(1)
    now = time.time()
    _, memory = _tick(dagster, env, pool, {}, now)
    [node] = pool.nodes()
    assert group(autoscaling, "test-spot")["DesiredCapacity"] == 1
    sqs, events, queue = interruption_queue(aws.url)
    cordoned: list[str] = []
    warn(events, node.id, REBALANCE)
    [action] = InterruptionReader(sqs, queue, env, pools, cordon=cordoned.extend).poll_once(wait_s=1)
    assert action.grow_pool is None and cordoned == [node.id]
    assert group(autoscaling, "test-spot")["DesiredCapacity"] == 1

    tick, memory = _tick(dagster, env, pool, memory, now + 1)
    assert [n.node_id for n in tick.removed] == [node.id], tick.plan.reason
    assert group(autoscaling, "test-spot")["DesiredCapacity"] == 0
    [lifetime] = read_node_lifetimes(dagster)
    assert (lifetime.node_id, lifetime.interrupted) == (node.id, "rebalance-recommendation")
    assert lifetime.interrupted_at is not None and lifetime.cost_usd > 0
