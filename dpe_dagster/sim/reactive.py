"""`reactive`: a model of Kubernetes Cluster Autoscaler with its documented defaults.

- a scan every 10 s (`--scan-interval`); scale up only for pods that are pending because no node
  has room, by as many nodes as the binpacking estimator says, counting nodes still booting;
- a node is unneeded when its requested CPU and memory are under 50% of the node
  (`--scale-down-utilization-threshold`) and its pods fit on other nodes; it is removed after 10
  minutes unneeded (`--scale-down-unneeded-time`) and never within 10 minutes of a scale-up
  (`--scale-down-delay-after-add`); empty nodes go in bulk, a non-empty one is drained (its pods are
  evicted and restart elsewhere) one per scan;
- the scheduler places pods first-fit.

Batch pods are usually marked `cluster-autoscaler.kubernetes.io/safe-to-evict: "false"`, since an
evicted job restarts from the beginning; that is the default here (`evictable=False`): then only
empty nodes can be unneeded.
"""

from __future__ import annotations

import math

from dpe_dagster.sim.dpe import grid_at_or_after
from dpe_dagster.sim.engine import Simulation
from dpe_dagster.sim.estimator import fits_elsewhere, new_nodes_for
from dpe_dagster.sim.placement import first_fit

SCAN_S = 10.0
UNNEEDED_S = 600.0
DELAY_AFTER_ADD_S = 600.0
UTILIZATION_THRESHOLD = 0.5
MAX_EMPTY_BULK_DELETE = 10


class ReactiveScaler:
    name = "reactive"

    def __init__(self, *, evictable: bool = False) -> None:
        self.evictable = evictable
        self.choose = first_fit
        self.unneeded_since: dict = {}
        self.last_scale_up = -math.inf

    def start(self, sim: Simulation) -> None:
        """Nothing before the first job: the pool starts empty."""

    def step(self, sim: Simulation, arrived: bool, ticked: bool, changed: bool) -> None:
        if ticked:
            self._scan(sim)
        if arrived or changed:
            sim.wake_at(grid_at_or_after(sim.now + 1e-6, SCAN_S))
        if self.unneeded_since:
            due = min(self.unneeded_since.values()) + UNNEEDED_S
            due = max(due, self.last_scale_up + DELAY_AFTER_ADD_S, sim.now)
            sim.wake_at(grid_at_or_after(due, SCAN_S))

    def _scan(self, sim) -> None:
        now = sim.now
        if sim.pending:
            new = new_nodes_for(sim)
            if new:
                sim.add_nodes(new)
                self.last_scale_up = now
        unneeded = self._unneeded(sim)
        self.unneeded_since = {node: self.unneeded_since.get(node, now) for node in unneeded}
        if now - self.last_scale_up < DELAY_AFTER_ADD_S:
            return
        due = [node for node, since in self.unneeded_since.items() if now - since >= UNNEEDED_S]
        empty = [node for node in due if not node.jobs][:MAX_EMPTY_BULK_DELETE]
        if empty:
            sim.remove_nodes(empty)
        else:
            busy = [node for node in due if node.jobs]
            if busy:
                node = busy[0]
                sim.evict(node)
                sim.remove_nodes([node])
        for node in [n for n in self.unneeded_since if n.id not in sim.nodes]:
            del self.unneeded_since[node]

    def _unneeded(self, sim) -> list:
        cpus, mem = sim.shape.cpus, sim.shape.memory_gb
        limit_c, limit_m = cpus * (1 - UTILIZATION_THRESHOLD), mem * (1 - UTILIZATION_THRESHOLD)
        candidates = [n for n in sim.ready_nodes if n.free_cpus > limit_c and (n.free_mem > limit_m or mem == math.inf)]
        if not candidates:
            return []
        candidates.sort(key=lambda n: -n.free_cpus)
        out, removed, free = [], set(), {}
        for node in candidates:
            if node in free:  # already takes pods of a node planned for removal
                continue
            if node.jobs:
                if not self.evictable:
                    continue
                trial = fits_elsewhere(sim, list(node.jobs), free, removed | {node})
                if trial is None:
                    continue
                free.update(trial)
            out.append(node)
            removed.add(node)
        return out
