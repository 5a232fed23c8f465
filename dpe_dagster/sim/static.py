"""`static-peak` and `static-p95`: a fixed 24x7 cluster, sized from the trace's own demand.

Demand at an instant is what the jobs running then would occupy if each started on arrival: its
CPUs as a fraction of a node, or whole nodes for a job larger than one. The cluster has the peak
(or the time-weighted 95th percentile) of that, rounded up, and never fewer nodes than the largest
job needs.
"""

from __future__ import annotations

import math

import numpy as np

from dpe_dagster.sim.engine import Simulation
from dpe_dagster.sim.placement import first_fit


def demand_in_nodes(sim_work, whole: list[int], node_cpus: float) -> tuple[np.ndarray, np.ndarray]:
    """(times, nodes demanded from each time to the next), from arrival/end sweeps."""
    arrival = np.asarray(sim_work.arrival)
    end = arrival + np.asarray(sim_work.duration)
    size = np.where(np.asarray(whole) > 0, np.asarray(whole, dtype=float), np.asarray(sim_work.cpus) / node_cpus)
    times = np.concatenate([arrival, end])
    delta = np.concatenate([size, -size])
    order = np.argsort(times, kind="stable")
    times, level = times[order], np.cumsum(delta[order])
    return times, level


def static_sizes(sim_work, whole: list[int], node_cpus: float) -> dict[str, int]:
    times, level = demand_in_nodes(sim_work, whole, node_cpus)
    spans = np.diff(times)
    levels = level[:-1]
    floor = max(max(whole, default=0), 1)
    peak = math.ceil(float(level.max()) - 1e-9)
    order = np.argsort(levels)
    weights = np.cumsum(spans[order])
    p95 = float(levels[order][np.searchsorted(weights, 0.95 * weights[-1])]) if weights[-1] > 0 else peak
    return {"static-peak": max(peak, floor), "static-p95": max(math.ceil(p95 - 1e-9), floor)}


class StaticScaler:
    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.choose = first_fit

    def start(self, sim: Simulation) -> None:
        sim.add_nodes(self.size, ready=True)

    def step(self, sim: Simulation, arrived: bool, ticked: bool, changed: bool) -> None:
        pass  # the cluster never changes
