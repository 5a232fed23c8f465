"""Packing runs onto nodes of one shape: the rules the scaling policy, the simulator, a cloud
emulator's model of its runs and the ledger share. Pure: no I/O, no Dagster.

- A run that fits on one node may share it; one larger than a node (in CPUs or memory) takes
  whole nodes, as many as its larger dimension needs (`whole_nodes`), and shares none.
- Runs that share are packed first fit, largest first (`first_fit_decreasing` when each run's node
  matters, `pack_by_size` when only how many nodes they need does).
"""

from __future__ import annotations

import math
from itertools import repeat
from typing import Hashable, Iterable, Mapping, Sequence

# Room left by subtracting sizes one by one may be a rounding error short.
SLACK = 1e-9


def whole_nodes(cpus: float, memory_gb: float, node_cpus: float, node_memory_gb: float) -> int:
    """The whole nodes a run takes: 0 when it fits on one node (which it may share), else as many
    as the larger of its CPU and memory requests needs."""
    if cpus <= node_cpus and memory_gb <= node_memory_gb:
        return 0
    return max(math.ceil(cpus / node_cpus), math.ceil(memory_gb / node_memory_gb))


def node_share(cpus: float, memory_gb: float, node_cpus: float, node_memory_gb: float) -> float:
    """Nodes of this shape a run's requests occupy: a fraction of one node when it fits on one,
    whole nodes when it does not."""
    whole = whole_nodes(cpus, memory_gb, node_cpus, node_memory_gb)
    return float(whole) if whole else max(cpus / node_cpus, memory_gb / node_memory_gb)


def how_many_fit(room: Sequence[float], cpus: float, memory_gb: float) -> int:
    """How many runs of this size fit in `room` ([cpus, memory] left)."""
    by_cpus = math.floor((room[0] + SLACK) / cpus) if cpus > 0 else math.inf
    by_memory = math.floor((room[1] + SLACK) / memory_gb) if memory_gb > 0 else math.inf
    fit = min(by_cpus, by_memory)
    return 0 if fit <= 0 else (1 << 62 if fit == math.inf else int(fit))


def pack_by_size(waiting: Mapping[tuple[float, float], int], rooms: list[list[float]], node_cpus: float,
                 node_memory_gb: float) -> int:
    """Pack waiting runs, given as how many of each (cpus, memory) size, into `rooms` ([cpus,
    memory] left on each node, updated in place) and then onto new nodes, appended to `rooms`;
    returns how many new nodes that takes. First fit, largest first, a size at a time: runs of one
    size go to the first room that holds them, so each room in turn takes as many as fit (the same
    packing as placing them one by one, in time proportional to the sizes, not the runs). Sizes
    must fit on one node (see `whole_nodes`)."""
    new = 0
    for (cpus, memory), count in sorted(waiting.items(), reverse=True):
        for room in rooms:
            if (cpus > 0 and (room[0] + SLACK) / cpus < 1.0) or (memory > 0 and (room[1] + SLACK) / memory < 1.0):
                continue  # no room for one (`how_many_fit`'s test, without a call: most rooms are full)
            fit = how_many_fit(room, cpus, memory)
            if fit:
                taken = min(fit, count)
                room[0] -= taken * cpus
                room[1] -= taken * memory
                count -= taken
                if not count:
                    break
        # The rest on new nodes, as many on each as fit, the last one taking what is left.
        per_node = how_many_fit([node_cpus, node_memory_gb], cpus, memory)
        full, last = divmod(count, per_node)
        rooms.extend(map(list, repeat((node_cpus - per_node * cpus, node_memory_gb - per_node * memory), full)))
        if last:
            rooms.append([node_cpus - last * cpus, node_memory_gb - last * memory])
        new += full + (1 if last else 0)
    return new


def first_fit_decreasing(requests: Iterable[tuple[float, float, Hashable]], nodes: Sequence[Hashable],
                         node_cpus: float, node_memory_gb: float,
                         free: Mapping[Hashable, Sequence[float]] | None = None) -> dict[Hashable, list[Hashable]]:
    """Request key -> the nodes it occupies, packing (cpus, memory, key) requests largest first
    onto `nodes` in their order (each first-fit). A request larger than a node takes that many
    wholly free nodes (the free ones there are, if fewer); one that finds no room is left out.
    `free`: [cpus, memory] left on the nodes it names (the others are empty); it is not changed."""
    free = free or {}
    room = {node: list(free[node]) if node in free else [node_cpus, node_memory_gb] for node in nodes}
    placed: dict[Hashable, list[Hashable]] = {}
    for cpus, memory_gb, key in sorted(requests, key=lambda r: (r[0], r[1]), reverse=True):
        whole = whole_nodes(cpus, memory_gb, node_cpus, node_memory_gb)
        if whole:
            empty = [node for node in nodes if room[node] == [node_cpus, node_memory_gb]][:whole]
            for node in empty:
                room[node] = [0.0, 0.0]
            if empty:
                placed[key] = empty
            continue
        for node in nodes:
            if how_many_fit(room[node], cpus, memory_gb):
                room[node][0] -= cpus
                room[node][1] -= memory_gb
                placed[key] = [node]
                break
    return placed
