"""Where a pending job goes among the ready nodes with room for it (the scheduler's choice)."""

from __future__ import annotations


def first_fit(sim, job: int, exclude) -> object | None:
    """The first ready node, in launch order, with room."""
    cpus, mem = sim.work.cpus[job], sim.work.memory_gb[job]
    for node in sim.ready_nodes:
        if node.free_cpus >= cpus and node.free_mem >= mem and node not in exclude:
            return node
    return None


def ending_together(sim, job: int, exclude) -> object | None:
    """The node whose paid time this job extends least, by its expected duration: a job that ends
    before a node's other jobs costs nothing there, one on an empty node costs its whole run. Among
    equals, the node that ends soonest after it, then the tightest fit; so jobs that end together
    share nodes and nodes empty whole."""
    work = sim.work
    expected = work.expected[job]
    if expected is None:
        return first_fit(sim, job, exclude)
    cpus, mem, now = work.cpus[job], work.memory_gb[job], sim.now
    end = now + expected
    best, best_key = None, None
    for node in sim.ready_nodes:
        if node.free_cpus < cpus or node.free_mem < mem or node in exclude:
            continue
        if node.jobs:
            node_end = node.end_hint if node.end_hint > now else now
            extension = end - node_end if end > node_end else 0.0
            key = (extension, node_end - end if extension == 0.0 else 0.0, node.free_cpus)
        else:
            key = (expected, 0.0, node.free_cpus)
        if best_key is None or key < best_key:
            best, best_key = node, key
    return best
