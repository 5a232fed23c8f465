"""The policy's optional knowledge (used by the simulator's dpe, and by production when it has it):
node-aware packing, adaptive idle timeouts, placement by expected end. With defaults, nothing changes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpe_dagster.config import ConfigError, parse_pool
from dpe_dagster.pools.base import Node
from dpe_dagster.scaling.policy import (
    NodeRoom,
    PoolActivity,
    PoolState,
    RunDemand,
    extension_class,
    idle_limits,
    idle_timeouts,
    nodes_for,
    place_run,
    plan_pool,
)

BASE = {"provider": "local", "max_size": 20, "node_cpus": 8, "node_memory_gb": 32, "price_per_node_hour": 1.0}


def pool(**extra):
    return parse_pool("etl", {**BASE, **extra})


def test_idle_timeout_mode_is_validated():
    assert pool().idle_timeout_mode == "auto"  # the default, chosen by measurement
    assert pool(idle_timeout_mode="fixed").idle_timeout_mode == "fixed"
    assert pool(idle_timeout_mode="auto").idle_timeout_mode == "auto"
    with pytest.raises(ConfigError, match=r"pools\.etl\.idle_timeout_mode: must be one of fixed, auto; got 'soon'"):
        pool(idle_timeout_mode="soon")


def test_runs_pinned_to_nodes_pack_into_the_room_really_left():
    # two nodes each hold a 5-CPU run; a 6-CPU run waits. Repacked from scratch, 2 nodes would do;
    # where the runs really are, the waiting run needs a third node.
    blind = [RunDemand("a", 5, 1), RunDemand("b", 5, 1), RunDemand("w", 3, 1), RunDemand("x", 3, 1)]
    assert nodes_for(blind, 8, 32) == 2
    pinned = [RunDemand("a", 5, 1, node_id="n1"), RunDemand("b", 5, 1, node_id="n2"), RunDemand("w", 6, 1)]
    assert nodes_for(pinned, 8, 32) == 3
    nodes = (Node("n1", "running", 0, True), Node("n2", "running", 0, True))
    assert plan_pool(pool(), PoolState(2, nodes), pinned, 100).target == 3


def test_room_freed_within_the_queueing_allowance_counts():
    nodes = (Node("n1", "running", 0, True),)
    demand = [RunDemand("a", 6, 1, node_id="n1", expected_end=105), RunDemand("w", 6, 1)]
    no_allowance = PoolState(1, nodes, activity=PoolActivity(0.0, 120.0))
    assert plan_pool(pool(), no_allowance, demand, 100).target == 2
    allowance = PoolState(1, nodes, activity=PoolActivity(0.0, 120.0, wait_target_s=10.0))
    assert plan_pool(pool(), allowance, demand, 100).target == 1  # a ends in 5 s: w waits for it
    late = [RunDemand("a", 6, 1, node_id="n1", expected_end=150), RunDemand("w", 6, 1)]
    assert plan_pool(pool(), allowance, late, 100).target == 2  # 50 s away: boot a node


def test_fixed_mode_ignores_activity_and_auto_adapts():
    nodes = (Node("i1", "running", 0, False), Node("i2", "running", 0, False))
    quiet = PoolState(2, nodes, activity=PoolActivity(cpu_arrival_rate=0.0, boot_s=120.0))
    busy = PoolState(2, nodes, activity=PoolActivity(cpu_arrival_rate=1.0, boot_s=120.0))
    assert idle_timeouts(pool(idle_timeout_s=300), busy) == [300, 300]
    auto = pool(idle_timeout_s=1800, idle_timeout_mode="auto")
    assert idle_timeouts(auto, quiet) == [0, 0]  # nothing arrives: nothing to keep a node for
    # 120 CPUs arrive per boot and no run may wait: both nodes are kept as long as the cap allows
    assert idle_timeouts(auto, busy) == [1800, 1800]
    assert idle_timeouts(pool(idle_timeout_s=600, idle_timeout_mode="auto"), busy) == [600, 600]


def test_a_wait_target_shortens_the_idle_timeouts_to_one_boot_once_it_covers_a_boot():
    nodes = (Node("i1", "running", 0, False), Node("i2", "running", 0, False))
    auto = pool(idle_timeout_s=1800, idle_timeout_mode="auto")

    def timeouts(target: float, rate: float = 1.0) -> list[float]:
        return idle_timeouts(auto, PoolState(2, nodes, activity=PoolActivity(rate, 120.0, wait_target_s=target)))

    assert timeouts(0) == [1800, 1800]  # a run that finds no room waits a boot, 120 s: all of it late
    assert timeouts(60) == [pytest.approx(120 + 1680 * 60 / 120)] * 2  # half of it late: half way to the cap
    # a run may wait a boot: an idle node only pays for the boot it may save (ski rental)
    assert timeouts(120) == timeouts(3600) == [120, 120]
    # 12 CPUs per boot fill the first node 1.5 times, the second 0.75 times: not worth a boot of it
    assert timeouts(120, rate=0.1) == [120, 0]


def test_a_burst_needs_an_idle_node_once_however_many_runs_it_holds():
    nodes = (Node("i1", "running", 0, False), Node("i2", "running", 0, False))
    auto = pool(idle_timeout_s=1800, idle_timeout_mode="auto")

    def timeouts(arrivals_per_s: float, target: float) -> list[float]:
        activity = PoolActivity(1.0, 120.0, wait_target_s=target, arrivals_per_s=arrivals_per_s)
        return idle_timeouts(auto, PoolState(2, nodes, activity=activity))

    # the same 120 CPUs per boot in one burst every 10 minutes: a burst comes within a boot 0.2 times.
    # Once the target covers a boot, each time saves at most a boot: not worth keeping a node for
    assert timeouts(1 / 600, 120) == [0, 0]
    # while no run may wait, a late second weighs more the shorter the target: worth keeping then
    assert timeouts(1 / 600, 0) == [1800, 1800]
    # every 3 minutes, 0.67 times: worth it at a 60 s target (a late second weighs 2), not at 120 s
    assert timeouts(1 / 180, 60) == [960, 960] and timeouts(1 / 180, 120) == [0, 0]
    # as a stream (a tick in every 15 s sees runs arrive): needed 8 and 7.5 times within a boot
    assert timeouts(1 / 15, 120) == [120, 120]


def test_auto_mode_removes_the_longest_idle_node_first_and_only_after_its_timeout():
    auto = pool(idle_timeout_s=1800, idle_timeout_mode="auto")
    nodes = (Node("old", "running", 0, False), Node("new", "running", 0, False))
    state = PoolState(2, nodes, {"old": 0.0, "new": 500.0}, PoolActivity(cpu_arrival_rate=0.1, boot_s=120.0))
    limits = idle_timeouts(auto, state)  # [new, old]
    plan = plan_pool(auto, state, [], limits[1] + 1)
    assert plan.remove == ("old",)
    assert plan.idle_timeout_s == max(limits)


@settings(max_examples=300, deadline=None)
@given(
    min_size=st.integers(0, 2),
    idle=st.lists(st.integers(0, 3000), max_size=6),
    busy=st.integers(0, 4),
    rate=st.floats(0, 5),
    cap=st.sampled_from([0, 60, 600, 1800]),
    runs=st.lists(st.sampled_from([1, 2, 4, 8, 12]), max_size=8),
)
def test_auto_mode_keeps_the_policy_rules(min_size, idle, busy, rate, cap, runs):
    auto = pool(min_size=min_size, idle_timeout_s=cap, idle_timeout_mode="auto")
    now = 10_000.0
    nodes = tuple(Node(f"i{k}", "running", 0, False) for k in range(len(idle)))
    nodes += tuple(Node(f"b{k}", "running", 0, True) for k in range(busy))
    state = PoolState(len(nodes), nodes, {f"i{k}": now - s for k, s in enumerate(idle)},
                      PoolActivity(cpu_arrival_rate=rate, boot_s=120.0, wait_target_s=10.0))
    demand = [RunDemand(f"r{k}", c, 1, node_id=f"b{k}" if k < busy else None, expected_end=now + 5 * k)
              for k, c in enumerate(runs)]
    plan = plan_pool(auto, state, demand, now)
    limits = {node_id: limit for node_id, _, limit in idle_limits(auto, state, now)}
    assert plan.target <= max(auto.max_size, len(nodes))
    if plan.remove:
        assert plan.target >= auto.min_size
        for node_id in plan.remove:
            assert node_id.startswith("i")  # never a busy node
            assert now - state.idle_since[node_id] >= limits[node_id]  # after its own timeout


def test_place_run_groups_runs_that_end_together():
    rooms = [NodeRoom("old", 4, 16, busy_until=2_000), NodeRoom("young", 4, 16, busy_until=10_000),
             NodeRoom("empty", 8, 32, busy_until=None)]  # oldest first
    assert place_run(RunDemand("r", 2, 1, expected_end=300), rooms, 0) == "old"  # ends before both: the oldest
    assert place_run(RunDemand("r", 2, 1, expected_end=5_000), rooms, 0) == "young"  # ends before it: free
    assert place_run(RunDemand("r", 2, 1, expected_end=20_000), rooms, 0) == "young"  # extends it least
    assert place_run(RunDemand("r", 6, 1, expected_end=300), rooms, 0) == "empty"  # only room
    assert place_run(RunDemand("r", 9, 1, expected_end=300), rooms, 0) is None
    assert place_run(RunDemand("r", 2, 1), rooms, 0) == "old"  # no estimate: first with room


def test_place_run_counts_extensions_within_a_factor_of_two_as_equal_and_then_takes_the_oldest_node():
    # estimates are rough: 58 and 67 minutes more are the same cost; the older node is the better bet
    rooms = [NodeRoom("older", 4, 16, busy_until=1_000), NodeRoom("newer", 4, 16, busy_until=1_500)]
    assert place_run(RunDemand("r", 2, 1, expected_end=5_000), rooms, 0) == "older"
    # 483 against 167 minutes more is a real difference
    rooms = [NodeRoom("older", 4, 16, busy_until=1_000), NodeRoom("newer", 4, 16, busy_until=20_000)]
    assert place_run(RunDemand("r", 2, 1, expected_end=30_000), rooms, 0) == "newer"
    assert [extension_class(s) for s in (-5, 0, 15, 60, 3_600)] == [0, 0, 0, 1, 6]


def test_a_scheduled_run_about_to_fire_is_not_bet_on_estimated_ends():
    nodes = (Node("n1", "running", 0, True),)
    allowance = PoolState(1, nodes, activity=PoolActivity(0.0, 120.0, wait_target_s=10.0))
    ending_soon = RunDemand("a", 6, 1, node_id="n1", expected_end=105)
    assert plan_pool(pool(), allowance, [ending_soon, RunDemand("w", 6, 1)], 100).target == 1
    upcoming = RunDemand("s", 6, 1, upcoming=True)
    assert plan_pool(pool(), allowance, [ending_soon, upcoming], 100).target == 2
