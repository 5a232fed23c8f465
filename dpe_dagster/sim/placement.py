"""Where a waiting job goes among the ready nodes with room (the scheduler's choice): the pool's
`placement` rule as production decides it, `place_run` (scaling/policy.py) on the ready nodes,
oldest first. `first-fit` (and every baseline): the first node with room; `ending-together`: the
node whose paid time the job lengthens least, by its expected end."""

from __future__ import annotations

from typing import AbstractSet

from dpe_dagster.scaling.policy import RunDemand, place_run
from dpe_dagster.sim.engine import NodeChoice, SimNode, Simulation


def first_fit(sim: Simulation, job: int, exclude: AbstractSet[SimNode]) -> SimNode | None:
    return _place(sim, job, exclude, None)


def ending_together(sim: Simulation, job: int, exclude: AbstractSet[SimNode]) -> SimNode | None:
    expected = sim.work.expected[job]
    return _place(sim, job, exclude, None if expected is None else sim.now + expected)


def for_placement(placement: str) -> NodeChoice:
    """The choice for a pool's `placement` setting."""
    return ending_together if placement == "ending-together" else first_fit


def _place(sim: Simulation, job: int, exclude: AbstractSet[SimNode], expected_end: float | None) -> SimNode | None:
    run = RunDemand(str(job), sim.work.cpus[job], sim.work.memory_gb[job], expected_end=expected_end)
    # lazily: first fit stops at the first node with room
    chosen = place_run(run, (node.room for node in sim.ready_nodes if node not in exclude), sim.now)
    return None if chosen is None else sim.nodes[chosen]
