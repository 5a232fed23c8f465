"""The clairvoyant reference: a pool that knows every arrival, boots ahead and packs perfectly."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from dpe_dagster.sim.boot import BootTime
from dpe_dagster.sim.engine import PoolShape, whole_nodes
from dpe_dagster.sim.reference import clairvoyant_node_seconds
from dpe_dagster.sim.run import Setup, clairvoyant, lower_bound
from dpe_dagster.sim.workload import Workload

BOOT = 120.0


def workload(jobs: list[tuple[float, float, float]]) -> Workload:
    """jobs: (arrival, duration, cpus)."""
    return Workload("t", [a for a, _, _ in jobs], [d for _, d, _ in jobs], [c for _, _, c in jobs],
                    [0.0] * len(jobs), [None] * len(jobs), [False] * len(jobs))


def paid(jobs, node_cpus=8.0, boot=BOOT) -> float:
    work = workload(jobs)
    shape = PoolShape(node_cpus, math.inf, 1.0, BootTime.fixed(boot), 0.0, None)
    return clairvoyant_node_seconds(work, node_cpus, whole_nodes(work, shape), boot)


def test_one_job_pays_one_boot_and_its_length():
    assert paid([(0, 1000, 1)]) == 1120


def test_a_gap_shorter_than_a_boot_is_kept_a_longer_one_is_released_and_booted_again():
    assert paid([(0, 100, 1), (150, 100, 1)]) == 120 + 100 + 50 + 100
    assert paid([(0, 100, 1), (600, 100, 1)]) == 120 + 100 + 120 + 100


def test_jobs_share_nodes_up_to_their_cpus_and_large_jobs_take_whole_nodes():
    assert paid([(0, 100, 1)] * 8) == 220  # eight 1-CPU jobs fill one 8-CPU node
    assert paid([(0, 100, 1)] * 9) == 440  # the ninth needs a second node
    assert paid([(0, 100, 20)]) == 3 * 220  # 20 CPUs on 8-CPU nodes: three whole nodes


jobs_strategy = st.lists(
    st.tuples(st.floats(0, 5000), st.floats(1, 2000), st.sampled_from([0.5, 1, 2, 3, 8, 12, 40])),
    min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(jobs_strategy)
def test_without_boots_it_is_the_perfectly_packed_pool_and_never_below_the_lower_bound(jobs):
    # with no boot, the clairvoyant pool holds exactly ceil(CPUs running / C) nodes (plus whole
    # nodes) at every instant: compare with that integral taken the slow way
    times = sorted({t for a, d, _ in jobs for t in (a, a + d)})
    expected = 0.0
    for lo, hi in zip(times, times[1:]):
        mid = (lo + hi) / 2
        running = [c for a, d, c in jobs if a <= mid < a + d]
        whole = sum(math.ceil(c / 8) for c in running if c > 8)
        shared = sum(c for c in running if c <= 8)
        expected += (hi - lo) * (whole + math.ceil(shared / 8 - 1e-9))
    assert math.isclose(paid(jobs, boot=0.0), expected, rel_tol=1e-9, abs_tol=1e-6)
    setup = Setup(node_cpus=8.0, boot=BootTime.fixed(BOOT))
    seer = clairvoyant(workload(jobs), setup)
    assert seer["node_hours"] >= lower_bound(workload(jobs), setup)["node_hours"] - 1e-9
    # booting ahead costs at most one boot per job on top of the boot-free pool
    assert seer["node_hours"] * 3600 <= expected + BOOT * sum(max(1, math.ceil(c / 8)) for _, _, c in jobs) + 1e-6
