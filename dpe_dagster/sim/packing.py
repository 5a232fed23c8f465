"""How many new nodes the pending jobs need, counting the nodes already booting (what Cluster
Autoscaler's binpacking estimator and Karpenter's provisioner both compute)."""

from __future__ import annotations


def new_nodes_for(sim, jobs) -> int:
    work, shape, whole = sim.work, sim.shape, sim.whole
    booting = sum(1 for node in sim.nodes.values() if not node.ready)
    bins: list[list[float]] = []  # [cpus, memory] left on each booting or new node
    empty_booting = booting
    new = 0
    small = []
    for job in jobs:
        if whole[job]:
            take = min(empty_booting, whole[job])
            empty_booting -= take
            new += whole[job] - take
        else:
            small.append(job)
    bins = [[shape.cpus, shape.memory_gb] for _ in range(empty_booting)]
    for job in sorted(small, key=lambda j: (work.cpus[j], work.memory_gb[j]), reverse=True):
        cpus, mem = work.cpus[job], work.memory_gb[job]
        for room in bins:
            if room[0] >= cpus and room[1] >= mem:
                room[0] -= cpus
                room[1] -= mem
                break
        else:
            bins.append([shape.cpus - cpus, shape.memory_gb - mem])
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
