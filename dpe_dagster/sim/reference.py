"""What a clairvoyant pool would pay: the reference that says how much of a policy's gap to the
lower bound no online policy can close while nodes take time to boot.

The lower bound (`run.lower_bound`) packs CPU-seconds with no boot at all. Here every job still
starts on arrival and is packed perfectly (free migration, no fragmentation beyond whole-node
rounding of jobs larger than a node), but a node is paid from its request, one boot before it
takes work. Knowing every arrival, the cheapest schedule splits by level: the k-th node is needed
whenever at least k nodes of work are running; across a gap in that need it is kept when the gap
is shorter than a boot and released (then booted again, ahead of time) otherwise. Nested levels
make these choices independent, so the sum over levels is the optimum for this model.

A real policy may beat it only by making jobs wait (which the wait columns show), never by
knowing more.
"""

from __future__ import annotations

import math

from dpe_dagster.sim.workload import Workload


def clairvoyant_node_seconds(work: Workload, node_cpus: float, whole: list[int], boot_s: float) -> float:
    """Paid node-seconds of the clairvoyant pool (see the module's docstring). `whole[j]`: the
    whole nodes job j takes (0: it shares a node with others)."""
    events: dict[float, list[float]] = {}  # time -> [change in whole nodes, change in shared CPUs]
    for job, arrival in enumerate(work.arrival):
        end = arrival + work.duration[job]
        if end <= arrival:
            continue
        nodes, cpus = (whole[job], 0.0) if whole[job] else (0, work.cpus[job])
        for at, sign in ((arrival, 1), (end, -1)):
            change = events.setdefault(at, [0.0, 0.0])
            change[0] += sign * nodes
            change[1] += sign * cpus
    paid = 0.0
    level = 0
    whole_nodes, shared_cpus = 0.0, 0.0
    on_since: list[float] = []  # per level (index k-1): when its current busy stretch began
    off_since: list[float | None] = []  # per level: when it last went idle (None: never used yet)
    for at in sorted(events):
        change = events[at]
        whole_nodes += change[0]
        shared_cpus += change[1]
        # the rounding guard keeps float noise in the running CPU sum from adding a node
        wanted = int(round(whole_nodes)) + max(0, math.ceil(shared_cpus / node_cpus - 1e-9))
        while level < wanted:  # level k = level + 1 becomes busy
            if level == len(on_since):
                on_since.append(at)
                off_since.append(None)
            idle_gap = off_since[level]
            paid += boot_s if idle_gap is None else min(at - idle_gap, boot_s)
            on_since[level] = at
            level += 1
        while level > wanted:  # the top level goes idle
            level -= 1
            paid += at - on_since[level]
            off_since[level] = at
    return paid
