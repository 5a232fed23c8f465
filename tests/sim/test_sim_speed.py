"""The replay's work grows with the jobs, not with the jobs times the queue: a user replaying a
trace twice as large waits about twice as long. Work is counted (jobs offered to a scaler's
placement), never timed."""

from __future__ import annotations

import random

import pytest

from dpe_dagster.sim.engine import Simulation
from dpe_dagster.sim.policies import POLICIES
from dpe_dagster.sim.run import Setup
from dpe_dagster.sim.trace import Trace
from dpe_dagster.sim.workload import build_workload


def bursts(tasks_per_burst: int, count: int = 30, seed: int = 4) -> Trace:
    """Short tasks (median 30 s, 1-4 CPUs) in bursts submitted within seconds, ten minutes apart:
    each burst queues while nodes boot."""
    rng = random.Random(seed)
    trace = Trace(f"bursts-of-{tasks_per_burst}")
    for burst in range(count):
        for _ in range(tasks_per_burst):
            trace.add(burst * 600.0 + rng.expovariate(1 / 2.0), max(1.0, rng.lognormvariate(3.4, 0.8)),
                      rng.choice([1, 2, 4]), key=f"kind{burst % 5}")
    return trace.sorted()


def placement_attempts(policy: str, trace: Trace) -> int:
    work = build_workload(trace)
    setup = Setup(node_cpus=8)
    sim = Simulation(work, setup.shape(), None)
    sim.scaler = POLICIES[policy].build(work, setup, sim.whole, 0.0)
    sim.run()
    assert sim.done == len(work)
    return sim.placement_attempts


@pytest.mark.parametrize("policy", ["dpe", "reactive", "consolidating", "static-p95"])
def test_twice_the_jobs_per_burst_is_about_twice_the_placement_work(policy):
    small, large = bursts(60), bursts(120)
    assert len(large) == 2 * len(small)
    work_small, work_large = placement_attempts(policy, small), placement_attempts(policy, large)
    assert work_small >= len(small)  # every job is offered at least once
    # offering every queued job again after every event would make this about 4x
    assert work_large <= 2.5 * work_small, (work_small, work_large)
