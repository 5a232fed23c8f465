"""The node a run's pod prefers on an `ending-together` pool: the simulator's `place_run`, on the
provider's nodes and the runs that hold them. Pure: plain data in, a node id (or None) out."""

from __future__ import annotations

import pytest

from dpe_dagster.config import ConfigError, parse_environment
from dpe_dagster.launch.preferred_node import node_rooms, preferred_node
from dpe_dagster.pools.base import Node
from dpe_dagster.scaling.policy import NodeRoom, RunDemand

NOW = 1_800_000_000.0
HOUR = 3600.0


def pool(placement: str | None = "ending-together"):
    fields = {"provider": "aws_asg", "max_size": 5, "node_cpus": 4, "node_memory_gb": 16, "price_per_node_hour": 0.1,
              "labels": {"dpe.io/pool": "spot-etl"}, "settings": {"group_name": "g"},
              # nothing reserved for the kubelet: runs can have all 4 CPUs, which keeps the figures below whole
              "reserved_cpus": 0, "reserved_memory_gb": 0}
    if placement is not None:
        fields["placement"] = placement
    return parse_environment("t", {"aws": {"region": "us-east-1"}, "pools": {"spot-etl": fields}}).pool("spot-etl")


def node(node_id: str, age_h: float, state: str = "running") -> Node:
    return Node(node_id, state, launched_at=NOW - age_h * HOUR, busy=False)


def holding(run_id: str, node_id: str, cpus: float, ends_in_h: float | None, memory_gb: float = 2) -> RunDemand:
    return RunDemand(run_id, cpus, memory_gb, node_id=node_id,
                     expected_end=None if ends_in_h is None else NOW + ends_in_h * HOUR)


def launching(cpus: float = 1, ends_in_h: float | None = 2.0, memory_gb: float = 2) -> RunDemand:
    return RunDemand("new", cpus, memory_gb, expected_end=None if ends_in_h is None else NOW + ends_in_h * HOUR)


# Listed youngest first on purpose: the choice must not depend on the provider's order.
NODES = [node("i-young", 1), node("i-old", 5)]
# i-old frees up within the hour; i-young is held for three more hours.
RUNS = [holding("a", "i-old", 2, 0.5), holding("b", "i-young", 2, 3.0)]


def test_ending_together_picks_the_node_where_the_run_ends_with_the_runs_already_there():
    # Ends in 2 h: on i-young it ends before the run there (costs nothing); on i-old it would keep
    # the node 1.5 h past its end.
    assert preferred_node(pool(), NODES, RUNS, launching(ends_in_h=2.0), NOW) == "i-young"
    # Ends in 20 min: it ends before the runs on both; the oldest node takes it.
    assert preferred_node(pool(), NODES, RUNS, launching(ends_in_h=1 / 3), NOW) == "i-old"


def test_first_fit_pools_leave_the_node_to_the_scheduler():
    for first_fit in (pool("first-fit"), pool(None)):  # the default is first-fit
        assert first_fit.placement == "first-fit"
        assert preferred_node(first_fit, NODES, RUNS, launching(), NOW) is None


def test_a_node_without_room_is_never_picked():
    # i-young is where the run would end with the others, but 3 of its 4 CPUs are held.
    full_young = [holding("a", "i-old", 2, 0.5), holding("b", "i-young", 2, 3.0), holding("c", "i-young", 1, 3.0)]
    assert preferred_node(pool(), NODES, full_young, launching(cpus=2), NOW) == "i-old"
    # Memory counts too: 15 of i-young's 16 GB are held.
    no_memory = [holding("a", "i-old", 1, 0.5), holding("b", "i-young", 1, 3.0, memory_gb=15)]
    assert preferred_node(pool(), NODES, no_memory, launching(memory_gb=2), NOW) == "i-old"
    # No node has 3 CPUs free: the scheduler places the pod and the pool grows for it.
    assert preferred_node(pool(), NODES, RUNS, launching(cpus=3), NOW) is None


def test_pending_nodes_are_never_picked():
    booting = node("i-booting", 10, state="pending")  # the oldest, and empty: the pick were it running
    assert preferred_node(pool(), [booting, *NODES], RUNS, launching(ends_in_h=None), NOW) == "i-old"
    assert preferred_node(pool(), [booting], [], launching(), NOW) is None


def test_room_counts_what_the_holding_runs_asked_and_ignores_the_run_itself_and_runs_elsewhere():
    runs = [*RUNS,
            RunDemand("new", 1, 2, node_id="i-old", expected_end=NOW),  # the run being launched: not a holder
            RunDemand("queued", 4, 16),  # waiting: holds no node
            holding("gone", "i-terminated", 4, 9.0)]  # on a node the provider no longer lists
    assert node_rooms(pool(), NODES, [r for r in runs if r.run_id != "new"]) == [
        NodeRoom("i-old", 2, 14, NOW + 0.5 * HOUR), NodeRoom("i-young", 2, 14, NOW + 3 * HOUR)]
    assert preferred_node(pool(), NODES, runs, launching(cpus=2, ends_in_h=2.0), NOW) == "i-young"


def test_runs_without_expected_ends():
    # Holders with no expected end leave the node's end unknown (empty as far as ends go)...
    unknown = [holding("a", "i-old", 1, None)]
    assert node_rooms(pool(), NODES, unknown)[0] == NodeRoom("i-old", 3, 14, None)
    # ...and a run with no expected end of its own goes to the oldest node with room.
    assert preferred_node(pool(), NODES, RUNS, launching(ends_in_h=None), NOW) == "i-old"


def test_placement_is_validated_naming_the_field_and_the_allowed_values():
    with pytest.raises(ConfigError, match=r"pools\.spot-etl\.placement: must be one of first-fit, ending-together; "
                                          r"got 'best-fit'"):
        pool("best-fit")
