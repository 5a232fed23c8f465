"""The scaling policy's invariants, checked on generated pools, states and demand."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from dpe_dagster.config import parse_pool
from dpe_dagster.pools.base import Node
from dpe_dagster.scaling.policy import PoolActivity, PoolState, RunDemand, next_change, nodes_for, plan_pool


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


@st.composite
def timed_scenarios(draw):
    """A scenario whose plan time alone may change: idle timeouts fixed or auto (the arrival rate
    decaying as it does with no arrival), a queueing allowance, runs on nodes with expected ends."""
    pool, state, demand, now = draw(scenarios())
    pool = pool.model_copy(update={"idle_timeout_mode": draw(st.sampled_from(["fixed", "auto"]))})
    activity = draw(st.none() | st.builds(PoolActivity, st.floats(0, 0.5), st.sampled_from([30.0, 120.0]),
                                          st.sampled_from([0.0, 10.0, 60.0])))
    busy = [node.id for node in state.nodes if node.busy and node.busy_known and node.state == "running"]
    if busy:
        demand = demand + [RunDemand(f"p{i}", draw(st.sampled_from([0.5, 1, 2])), 0.5,
                                     node_id=draw(st.sampled_from(busy)), expected_end=now + draw(st.integers(-60, 300)))
                           for i in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):  # waiting runs whose durations are known drain through room in turn
        demand = [replace(run, expected_s=draw(st.sampled_from([5.0, 30.0, 200.0]))) if run.node_id is None else run
                  for run in demand]
    not_ready_since = {n.id: now - draw(st.integers(0, 400)) for n in state.nodes
                       if n.state != "running" and draw(st.booleans())}
    # as the sensor sees them: every idle node with the time it was first seen idle
    idle_since = {n.id: state.idle_since.get(n.id, now - draw(st.integers(0, 1000))) for n in state.nodes
                  if not n.busy and n.state == "running"}

    def activity_at(t: float) -> PoolActivity | None:
        return activity and replace(activity, cpu_arrival_rate=activity.cpu_arrival_rate * math.exp((now - t) / 1800))

    return (pool, replace(state, activity=activity, idle_since=idle_since, not_ready_since=not_ready_since),
            demand, now, activity_at)


def planned_at(pool, state, demand, activity_at, t):
    plan = plan_pool(pool, replace(state, activity=activity_at(t)), demand, t)
    return plan.target, plan.remove


@settings(max_examples=400, deadline=None)
@given(timed_scenarios(), st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=6))
def test_time_alone_changes_the_plan_no_sooner_than_next_change_says(scenario, fractions):
    pool, state, demand, now, activity_at = scenario
    change = next_change(pool, state, demand, now, activity_at)
    assert change is None or change > now
    until = now + 5000 if change is None else change
    planned = planned_at(pool, state, demand, activity_at, now)
    for fraction in fractions:
        t = min(now + fraction * (until - now), math.nextafter(until, now))
        assert planned_at(pool, state, demand, activity_at, t) == planned, (t, change)


def test_next_change_is_when_an_idle_timeout_runs_out_or_a_node_misses_its_boot_timeout():
    pool = parse_pool("etl", {"provider": "local", "max_size": 4, "node_cpus": 2, "node_memory_gb": 8,
                              "price_per_node_hour": 0.1, "idle_timeout_s": 60, "idle_timeout_mode": "fixed",
                              "boot_timeout_s": 300})
    nodes = (Node("x", "running", 0, busy=False), Node("y", "running", 0, busy=True))
    state = PoolState(2, nodes, {"x": 100})

    def quiet(t):
        return None

    assert next_change(pool, state, [], 120, quiet) == 160  # x has been idle for the idle timeout
    assert planned_at(pool, state, [], quiet, 160) != planned_at(pool, state, [], quiet, 159.9)
    # a sensor ticking every 30 s plans at its first tick from then on
    assert next_change(pool, state, [], 120, quiet, lambda t: math.ceil(t / 30) * 30) == 180
    assert next_change(pool, PoolState(2, nodes), [], 120, quiet) is None  # x not seen idle: idle since each plan
    booting = PoolState(3, (*nodes, Node("z", "pending", 50, busy=False)), {"x": 100})
    assert next_change(pool, booting, [], 200, quiet) == 350  # launched at 50, not ready by 350: replaced


def test_next_change_is_when_a_runs_expected_end_enters_or_leaves_the_queueing_allowance():
    pool = parse_pool("etl", {"provider": "local", "max_size": 4, "node_cpus": 8, "node_memory_gb": 32,
                              "price_per_node_hour": 0.1})
    state = PoolState(1, (Node("n1", "running", 0, True),), activity=PoolActivity(0.0, 120.0, wait_target_s=10.0))

    def same(t):
        return state.activity

    demand = [RunDemand("a", 6, 1, node_id="n1", expected_end=1000), RunDemand("w", 6, 1)]
    assert next_change(pool, state, demand, 900, same) == 990  # a ends within the allowance: w waits for it
    assert planned_at(pool, state, demand, same, 990)[0] == 1 < planned_at(pool, state, demand, same, 989)[0]
    assert next_change(pool, state, demand, 995, same) == math.nextafter(1000, math.inf)  # a outlives its estimate
    assert planned_at(pool, state, demand, same, 1000.001)[0] == 2
    assert next_change(pool, state, demand[:1], 900, same) is None  # no run waits: the allowance changes nothing


def test_a_run_waits_for_room_that_frees_within_its_wait_target_even_past_a_boot():
    """With a wait target longer than a boot, room that a running run frees within it is room: no
    node is booted for the waiting run. A run whose own target is shorter (its tag) gets a node."""
    pool = parse_pool("etl", {"provider": "local", "max_size": 4, "node_cpus": 8, "node_memory_gb": 32,
                              "price_per_node_hour": 0.1, "wait_target_s": 600})
    assert pool.wait_target_s == 600
    state = PoolState(1, (Node("n1", "running", 0, True),), activity=PoolActivity(0.0, 120.0, wait_target_s=600))
    running = RunDemand("a", 6, 1, node_id="n1", expected_end=1300)  # frees its room 300 s from now
    assert plan_pool(pool, state, [running, RunDemand("w", 6, 1)], 1000).target == 1, "w waits 300 s for a's room"
    hurried = RunDemand("w", 6, 1, wait_target_s=60)  # a scheduled run, say: 60 s
    assert plan_pool(pool, state, [running, hurried], 1000).target == 2
    late = RunDemand("a", 6, 1, node_id="n1", expected_end=1700)  # beyond the target: a node is booted
    assert plan_pool(pool, state, [late, RunDemand("w", 6, 1)], 1000).target == 2


def test_waiting_runs_of_known_duration_drain_through_room_in_turn_within_the_wait_target():
    """Room that frees within the target takes one waiting run after another, as long as each
    starts by the target; without known durations a freed slot counts for one run."""
    running = RunDemand("a", 8, 1, node_id="n1", expected_end=1010)  # frees the whole node at 1010
    queued = [RunDemand(f"w{i}", 8, 1, expected_s=20) for i in range(4)]  # at 1010, 1030, 1050, 1070
    assert nodes_for([running, *queued[:3]], 8, 32, (1000, 1060)) == 1  # the third starts at 1050
    assert nodes_for([running, *queued], 8, 32, (1000, 1060)) == 2  # the fourth would start at 1070
    blind = [replace(run, expected_s=None) for run in queued[:3]]
    assert nodes_for([running, *blind], 8, 32, (1000, 1060)) == 3
    assert nodes_for([running, *queued[:3]], 8, 32) == 4  # no allowance: every waiting run gets room now
    # The shortest runs of a size go first: more of them start within the target.
    mixed = [RunDemand("long", 8, 1, expected_s=100), RunDemand("s1", 8, 1, expected_s=10),
             RunDemand("s2", 8, 1, expected_s=10)]
    assert nodes_for([running, *mixed], 8, 32, (1000, 1060)) == 1  # s1 at 1010, s2 at 1020, long at 1030


def test_a_new_node_holds_one_waiting_run_after_another_when_the_target_outlasts_its_boot():
    queued = [RunDemand(f"w{i}", 8, 1, expected_s=30) for i in range(6)]
    # ready at 1120, the target ends at 1200: runs start at 1120, 1150 and 1180 on each new node
    assert nodes_for(queued, 8, 32, (1000, 1200), new_node_at=1120) == 2
    assert nodes_for(queued, 8, 32, (1000, 1010), new_node_at=1120) == 6  # a target shorter than a boot
    pool = parse_pool("etl", {"provider": "local", "max_size": 10, "node_cpus": 8, "node_memory_gb": 32,
                              "price_per_node_hour": 0.1, "wait_target_s": 200})
    empty = PoolState(0, (), activity=PoolActivity(0.0, 120.0, wait_target_s=200))
    assert plan_pool(pool, empty, queued, 1000).target == 2
    assert plan_pool(pool, replace(empty, activity=PoolActivity(0.0, 120.0, wait_target_s=10)), queued, 1000).target == 6


def test_next_change_is_the_next_moment_while_waiting_runs_drain():
    pool = parse_pool("etl", {"provider": "local", "max_size": 4, "node_cpus": 8, "node_memory_gb": 32,
                              "price_per_node_hour": 0.1})
    state = PoolState(1, (Node("n1", "running", 0, True),), activity=PoolActivity(0.0, 120.0, wait_target_s=60.0))
    demand = [RunDemand("a", 8, 1, node_id="n1", expected_end=1100), RunDemand("w", 8, 1, expected_s=20)]
    assert next_change(pool, state, demand, 1000, lambda t: state.activity, lambda t: math.ceil(t / 15) * 15) == 1005
    # A run longer than the window takes freed room once: the plan changes only when an end enters it.
    long = [demand[0], RunDemand("w", 8, 1, expected_s=90)]
    assert next_change(pool, state, long, 1000, lambda t: state.activity) == 1040
