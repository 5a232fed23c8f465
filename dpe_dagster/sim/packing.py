"""How many new nodes the pending jobs need, counting the nodes already booting (what Cluster
Autoscaler's binpacking estimator and Karpenter's provisioner both compute)."""

from __future__ import annotations


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
    new = max(0, whole_nodes - booting)
    bins = [[shape.cpus, shape.memory_gb] for _ in range(max(0, booting - whole_nodes))]  # [cpus, memory] left
    # First fit, decreasing: jobs of one size fill each bin in turn as far as they fit (what
    # placing them one by one, each in the first bin with room, comes to).
    for cpus, mem in sorted(sizes, reverse=True):
        count = sizes[(cpus, mem)]
        for room in bins:
            while count and room[0] >= cpus and room[1] >= mem:
                room[0] -= cpus
                room[1] -= mem
                count -= 1
            if not count:
                break
        while count:
            room = [shape.cpus - cpus, shape.memory_gb - mem]
            count -= 1
            while count and room[0] >= cpus and room[1] >= mem:
                room[0] -= cpus
                room[1] -= mem
                count -= 1
            bins.append(room)
            new += 1
    return new


def fits_elsewhere(sim, jobs, free: dict, skip) -> dict | None:
    """Whether these jobs fit, first fit, into the free room of other ready nodes. `free` maps node
    -> [cpus, memory] left (for nodes not yet touched, the node's own free room is used). Returns
    the updated room on success, None otherwise (and `free` is left as it was)."""
    work = sim.work
    trial: dict = {}
    for job in sorted(jobs, key=lambda j: work.cpus[j], reverse=True):
        if sim.whole[job]:
            return None
        cpus, mem = work.cpus[job], work.memory_gb[job]
        for node in sim.ready_nodes:
            if node in skip:
                continue
            room = trial.get(node) or free.get(node) or [node.free_cpus, node.free_mem]
            if room[0] >= cpus and room[1] >= mem:
                trial[node] = [room[0] - cpus, room[1] - mem]
                break
        else:
            return None
    return trial
