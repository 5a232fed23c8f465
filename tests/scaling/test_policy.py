"""The scaling policy's invariants, checked on generated pools, states and demand."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from dpe_dagster.config import parse_pool
from dpe_dagster.pools.base import Node
from dpe_dagster.scaling.policy import PoolState, RunDemand, nodes_for, plan_pool


@st.composite
def scenarios(draw):
    min_size = draw(st.integers(0, 3))
    max_size = draw(st.integers(max(min_size, 1), 8))
    node_cpus = draw(st.sampled_from([1, 2, 4, 8]))
    pool = parse_pool("spot-etl", {
        "provider": "local", "min_size": min_size, "max_size": max_size, "node_cpus": node_cpus,
        "node_memory_gb": node_cpus * 4, "price_per_node_hour": 0.1,
        "idle_timeout_s": draw(st.sampled_from([0, 10, 60, 300])),
    })
    now = 10_000.0
    n_nodes = draw(st.integers(0, 10))
    nodes = []
    for i in range(n_nodes):
        known = draw(st.sampled_from([True, True, True, False]))
        nodes.append(Node(id=f"n{i}", state=draw(st.sampled_from(["running", "running", "pending"])),
                          launched_at=now - draw(st.integers(0, 5000)), busy=draw(st.booleans()) or not known,
                          busy_known=known))
    nodes = tuple(nodes)
    idle_since = {n.id: now - draw(st.integers(0, 1000)) for n in nodes if not n.busy and draw(st.booleans())}
    unknown_since = {n.id: now - draw(st.integers(0, 1000)) for n in nodes if not n.busy_known and draw(st.booleans())}
    target = draw(st.integers(len(nodes), len(nodes) + 3))
    demand = [RunDemand(f"r{i}", draw(st.sampled_from([0.5, 1, 2, 3, 16])), draw(st.sampled_from([0.5, 2, 8, 40])))
              for i in range(draw(st.integers(0, 12)))]
    return pool, PoolState(target, nodes, idle_since, unknown_since=unknown_since), demand, now


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_plan_respects_bounds_and_never_removes_busy_or_fresh_nodes(scenario):
    pool, state, demand, now = scenario
    plan = plan_pool(pool, state, demand, now)
    current = max(state.target, len(state.nodes))
    by_id = {n.id: n for n in state.nodes}
    idle = [node_id for node_id in plan.remove if plan.removed_because[node_id] == "idle"]
    stuck = [node_id for node_id in plan.remove if plan.removed_because[node_id] != "idle"]
    # Never grows past max; never shrinks below min; grows only while replacing stuck nodes.
    if plan.target > current:
        assert plan.target <= pool.max_size
        assert not idle
    assert plan.target >= min(pool.min_size, current)
    # Removal of existing, idle, running nodes idle for at least the idle timeout...
    assert len(set(plan.remove)) == len(plan.remove) == len(plan.removed_because)
    for node_id in idle:
        node = by_id[node_id]
        assert not node.busy and node.state == "running"
        assert now - state.idle_since.get(node_id, now) >= pool.idle_timeout_s  # unseen = idle since now
    # ...or of nodes not known busy that did not boot in time or stayed unknown too long.
    for node_id in stuck:
        node = by_id[node_id]
        assert not (node.busy and node.busy_known)
        if plan.removed_because[node_id] == "boot timeout":
            assert node.state != "running" and now - node.launched_at >= pool.boot_timeout_s
        else:
            assert not node.busy_known
            assert now - state.unknown_since.get(node_id, now) >= pool.idle_timeout_s + pool.unknown_busy_grace_s
    # Removing idle nodes lowers the target by the removed nodes, and beyond them only by withdrawing
    # capacity that has no node yet (never below the nodes kept), never below what demand needs.
    if idle and not stuck:
        assert len(state.nodes) - len(plan.remove) <= plan.target <= current - len(plan.remove)
        assert plan.target == current - len(plan.remove) or state.target > len(state.nodes)
    if plan.remove:
        assert plan.target >= plan.wanted >= pool.min_size


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_capacity_covers_demand_up_to_max(scenario):
    pool, state, demand, now = scenario
    plan = plan_pool(pool, state, demand, now)
    needed = nodes_for(demand, pool.node_cpus, pool.node_memory_gb)
    assert max(plan.target, len(state.nodes) - len(plan.remove)) >= min(needed, pool.max_size)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_a_repeated_plan_changes_nothing(scenario):
    """Apply a plan, look again at the same moment: the second plan must be a no-op."""
    pool, state, demand, now = scenario
    plan = plan_pool(pool, state, demand, now)
    kept = tuple(n for n in state.nodes if n.id not in plan.remove)
    after = PoolState(plan.target, kept, {k: v for k, v in state.idle_since.items() if k not in plan.remove},
                      unknown_since=state.unknown_since)
    again = plan_pool(pool, after, demand, now)
    assert not again.changes(after), again.reason


def test_scale_up_is_immediate_and_scale_down_waits_for_the_idle_timeout():
    pool = parse_pool("spot-etl", {"provider": "local", "max_size": 4, "node_cpus": 2, "node_memory_gb": 8,
                                   "price_per_node_hour": 0.1, "idle_timeout_s": 60})
    up = plan_pool(pool, PoolState(0, ()), [RunDemand("a", 2, 4), RunDemand("b", 1, 2), RunDemand("c", 1, 2)], 0)
    assert (up.target, up.remove) == (2, ())
    nodes = (Node("x", "running", 0, busy=False), Node("y", "running", 0, busy=True))
    early = plan_pool(pool, PoolState(2, nodes, {"x": 100}), [], 159)
    assert (early.target, early.remove) == (2, ())
    late = plan_pool(pool, PoolState(2, nodes, {"x": 100}), [], 160)
    assert (late.target, late.remove) == (1, ("x",))


def test_packing_uses_whole_nodes_for_runs_larger_than_a_node():
    assert nodes_for([RunDemand("big", 5, 1)], 2, 8) == 3
    assert nodes_for([RunDemand("mem", 1, 20)], 2, 8) == 3
    assert nodes_for([RunDemand(str(i), 1, 1) for i in range(5)], 2, 8) == 3
    assert nodes_for([], 2, 8) == 0


def first_fit_decreasing(demand, node_cpus, node_memory_gb):
    """The packing spelled out run by run: what `nodes_for` must equal."""
    whole, free, placed, waiting = 0, [], {}, []
    for run in demand:
        if run.cpus > node_cpus or run.memory_gb > node_memory_gb:
            whole += max(math.ceil(run.cpus / node_cpus), math.ceil(run.memory_gb / node_memory_gb))
        elif run.node_id is None:
            waiting.append(run)
        else:
            room = placed.setdefault(run.node_id, [node_cpus, node_memory_gb])
            room[0] -= run.cpus
            room[1] -= run.memory_gb
    free.extend(placed.values())
    for run in sorted(waiting, key=lambda d: (d.cpus, d.memory_gb), reverse=True):
        for room in free:
            if room[0] >= run.cpus and room[1] >= run.memory_gb:
                room[0] -= run.cpus
                room[1] -= run.memory_gb
                break
        else:
            free.append([node_cpus - run.cpus, node_memory_gb - run.memory_gb])
    return whole + len(free)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.5, 1, 2, 3, 4, 6, 8, 12]), st.sampled_from([0, 1, 2, 4, 8, 40]),
                          st.sampled_from([None, "n1", "n2", "n3"])), max_size=60))
def test_packing_a_size_at_a_time_is_first_fit_decreasing_run_by_run(runs):
    demand = [RunDemand(f"r{i}", cpus, memory, node_id=node) for i, (cpus, memory, node) in enumerate(runs)]
    assert nodes_for(demand, 8, 32) == first_fit_decreasing(demand, 8, 32)
