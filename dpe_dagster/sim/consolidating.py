"""`consolidating`: a model of Karpenter with its documented defaults.

- pending pods are batched: a batch closes 1 s after the last new pending pod or 10 s after the
  first (`BATCH_IDLE_DURATION`, `BATCH_MAX_DURATION`), then nodes are launched for all of it,
  counting nodes still booting;
- consolidation (`consolidationPolicy: WhenEmptyOrUnderutilized`, `consolidateAfter: 0s`), checked
  every 10 s: empty nodes are removed at once; a node whose pods all fit on the other nodes is
  removed and its pods evicted (they restart elsewhere);
- the scheduler places pods first-fit.

Batch pods are usually marked `karpenter.sh/do-not-disrupt`, since an evicted job restarts from the
beginning; that is the default here (`evictable=False`): then only empty nodes are consolidated.
"""

from __future__ import annotations

from dpe_dagster.sim.dpe import grid_at_or_after
from dpe_dagster.sim.engine import Simulation
from dpe_dagster.sim.estimator import fits_elsewhere, new_nodes_for
from dpe_dagster.sim.placement import first_fit

BATCH_IDLE_S = 1.0
BATCH_MAX_S = 10.0
DISRUPTION_POLL_S = 10.0


class ConsolidatingScaler:
    name = "consolidating"

    def __init__(self, *, evictable: bool = False) -> None:
        self.evictable = evictable
        self.choose = first_fit
        self.batch_start: float | None = None
        self.batch_last = 0.0

    def start(self, sim: Simulation) -> None:
        """Nothing before the first job: the pool starts empty."""

    def step(self, sim: Simulation, arrived: bool, ticked: bool, changed: bool) -> None:
        now = sim.now
        if sim.pending:
            if self.batch_start is None:
                self.batch_start = self.batch_last = now
            elif arrived:
                self.batch_last = now
            close = min(self.batch_last + BATCH_IDLE_S, self.batch_start + BATCH_MAX_S)
            if now >= close:
                self.batch_start = None
                sim.add_nodes(new_nodes_for(sim))
            else:
                sim.wake_at(close)
        else:
            self.batch_start = None
        if ticked and now % DISRUPTION_POLL_S == 0:
            self._consolidate(sim)
        if arrived or changed:
            sim.wake_at(grid_at_or_after(now + 1e-6, DISRUPTION_POLL_S))

    def _consolidate(self, sim) -> None:
        empty = [node for node in sim.ready_nodes if not node.jobs]
        if empty:
            sim.remove_nodes(empty)
        if not self.evictable:
            return
        # a dict, not a set: nodes are evicted in the order they were chosen, so where their jobs
        # restart does not depend on where the node objects sit in memory
        removed, free = {}, {}
        for node in sorted(sim.ready_nodes, key=lambda n: (len(n.jobs), -n.free_cpus)):
            if not node.jobs or node in free or any(sim.whole[j] for j in node.jobs):
                continue
            trial = fits_elsewhere(sim, list(node.jobs), free, removed.keys() | {node})
            if trial is None:
                continue
            free.update(trial)
            removed[node] = None
        for node in removed:
            sim.evict(node)
        if removed:
            sim.remove_nodes(list(removed))
