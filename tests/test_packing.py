"""Packing runs onto nodes (dpe_dagster/packing.py), the rules the policy, the simulator, the aws-sim
model and the ledger share: a run larger than a node takes whole nodes; the rest are packed first
fit, largest first, and counting by size gives the same nodes as placing runs one by one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dpe_dagster.packing import first_fit_decreasing, how_many_fit, node_share, pack_by_size, whole_nodes


def test_a_run_larger_than_a_node_takes_whole_nodes_by_its_larger_dimension():
    assert whole_nodes(2, 8, 4, 16) == 0  # fits: may share
    assert whole_nodes(6, 8, 4, 16) == 2  # CPUs: 1.5 nodes -> 2
    assert whole_nodes(2, 40, 4, 16) == 3  # memory: 2.5 nodes -> 3
    assert node_share(2, 4, 4, 16) == 0.5 and node_share(6, 8, 4, 16) == 2.0


def test_how_many_fit_tolerates_rounding_and_a_size_of_zero():
    assert how_many_fit([1.0, 4.0], 0.1 * 3, 1) == 3  # 0.30000000000000004 CPUs: still three in one CPU
    assert how_many_fit([2.0, 1.0], 1, 2) == 0
    assert how_many_fit([2.0, 8.0], 0, 2) == 4


def test_first_fit_decreasing_places_largest_first_and_whole_node_runs_on_empty_nodes():
    placed = first_fit_decreasing([(1, 1, "small"), (3, 1, "large"), (8, 1, "huge"), (1, 1, "small-2")],
                                  ["n1", "n2", "n3", "n4"], 4, 16)
    assert placed == {"huge": ["n1", "n2"], "large": ["n3"], "small": ["n3"], "small-2": ["n4"]}
    # Room already taken counts: n1 has 3 CPUs used (1 left), so the 2-CPU run goes to n2.
    assert first_fit_decreasing([(2, 1, "r")], ["n1", "n2"], 4, 16, free={"n1": [1, 15]}) == {"r": ["n2"]}
    # A whole-node run takes the empty nodes there are (the aws-sim model marks them busy), none if none.
    assert first_fit_decreasing([(5, 1, "too-big")], ["n1"], 4, 16) == {"too-big": ["n1"]}
    assert first_fit_decreasing([(5, 1, "too-big")], ["n1"], 4, 16, free={"n1": [3, 15]}) == {}


def test_pack_by_size_fills_the_rooms_given_before_new_nodes():
    rooms = [[1.0, 8.0], [3.0, 8.0]]
    # largest first: one 2-CPU run in the second room, the other on a new node; the 1-CPU run in the first
    assert pack_by_size({(2, 2): 2, (1, 1): 1}, rooms, 4, 16) == 1
    assert rooms == [[0.0, 7.0], [1.0, 6.0], [2.0, 14.0]]  # the new node is appended, with what is left on it
    assert pack_by_size({(4, 4): 3}, rooms, 4, 16) == 3


sizes = st.tuples(st.sampled_from([0.5, 1, 1.5, 2, 3, 4]), st.sampled_from([1, 2, 4, 8, 16]))


@settings(max_examples=200, deadline=None)
@given(runs=st.lists(sizes, max_size=40), rooms=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 16)), max_size=4))
def test_counting_by_size_packs_as_placing_runs_one_by_one(runs, rooms):
    """pack_by_size (the policy's hot loop) gives the nodes first_fit_decreasing gives when each
    run is placed on its own, on the same rooms first."""
    waiting: dict = {}
    for size in runs:
        waiting[size] = waiting.get(size, 0) + 1
    new = pack_by_size(waiting, [list(map(float, room)) for room in rooms], 4, 16)

    existing = [f"room{i}" for i in range(len(rooms))]
    spare = [f"new{i}" for i in range(len(runs))]
    free = {name: list(map(float, room)) for name, room in zip(existing, rooms)}
    placed = first_fit_decreasing([(cpus, mem, i) for i, (cpus, mem) in enumerate(runs)], existing + spare, 4, 16,
                                  free=free)
    assert len(placed) == len(runs)
    assert new == len({node for nodes in placed.values() for node in nodes if node.startswith("new")})
