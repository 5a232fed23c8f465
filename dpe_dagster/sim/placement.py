"""Where a pending job goes among the ready nodes with room for it (the scheduler's choice)."""

from __future__ import annotations


def first_fit(sim, job: int, exclude) -> object | None:
    """The first ready node, in launch order, with room."""
    cpus, mem = sim.work.cpus[job], sim.work.memory_gb[job]
    for node in sim.ready_nodes:
        if node.free_cpus >= cpus and node.free_mem >= mem and node not in exclude:
            return node
    return None
