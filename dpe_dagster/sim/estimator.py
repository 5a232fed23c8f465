"""The baselines' binpacking estimator: how many new nodes the pending jobs need, counting the
nodes already booting (what Cluster Autoscaler's estimator and Karpenter's provisioner compute),
and whether a node's jobs fit elsewhere (consolidation), with production's packing rules
(`dpe_dagster.packing`)."""

from __future__ import annotations

from dpe_dagster.packing import first_fit_decreasing, pack_by_size


def new_nodes_for(sim, jobs=None) -> int:
    """New nodes the jobs need (None: every pending job), packed first-fit decreasing (by CPUs,
    then memory) into the nodes still booting, then onto new nodes."""
    shape = sim.shape
    if jobs is None:
        sizes, whole_nodes = sim.pending_sizes()
    else:
        work, whole = sim.work, sim.whole
        sizes, whole_nodes = {}, 0
        for job in jobs:
            if whole[job]:
                whole_nodes += whole[job]
            else:
                size = (work.cpus[job], work.memory_gb[job])
                sizes[size] = sizes.get(size, 0) + 1
    booting = sum(1 for node in sim.nodes.values() if not node.ready)
    # whole-node jobs take empty booting nodes first, whatever their order
    rooms = [[shape.cpus, shape.memory_gb] for _ in range(max(0, booting - whole_nodes))]
    return max(0, whole_nodes - booting) + pack_by_size(sizes, rooms, shape.cpus, shape.memory_gb)


def fits_elsewhere(sim, jobs, free: dict, skip) -> dict | None:
    """Whether these jobs fit, first fit decreasing, into the free room of other ready nodes.
    `free` maps node -> [cpus, memory] left (for nodes not yet touched, the node's own free room is
    used). Returns the room left on the nodes they would go to, None if one does not fit (or takes
    whole nodes)."""
    work = sim.work
    if any(sim.whole[job] for job in jobs):
        return None
    nodes = [node for node in sim.ready_nodes if node not in skip]
    room = {node: free.get(node) or [node.free_cpus, node.free_mem] for node in nodes}
    placed = first_fit_decreasing(((work.cpus[job], work.memory_gb[job], job) for job in jobs), nodes,
                                  sim.shape.cpus, sim.shape.memory_gb, free=room)
    if len(placed) < len(jobs):
        return None
    trial: dict = {}
    for job, (node,) in placed.items():
        left = trial.setdefault(node, list(room[node]))
        left[0] -= work.cpus[job]
        left[1] -= work.memory_gb[job]
    return trial
